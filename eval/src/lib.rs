//! FID/KID evaluation: pytorch-fid-exact InceptionV3 features, statistics and the Fréchet distance.
