//! Command-line front doors (txt2img, generate, fid, train) and library examples.
