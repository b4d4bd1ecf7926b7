//! The hash-initialised network (reference README §2) against pytorch-fid's features.

mod common;
use common::{max_abs_diff, read_safetensors};
use deediff_eval::hashinit::{fnv1a64, hash_state_dict, hash_uniforms, SplitMix64};
use deediff_eval::{DeviceSpec, FidInception};

#[test]
fn generator_check_values() {
    assert_eq!(fnv1a64("a"), 0xaf63dc4c8601ec8c);
    assert_eq!(fnv1a64("input_32"), 0xd00dfd0cb5f122cd);
    let mut rng = SplitMix64(fnv1a64("input_32"));
    assert_eq!(
        [rng.next_u64(), rng.next_u64(), rng.next_u64()],
        [0x0b42518f8515e274, 0x31b059fcbc14490d, 0x787f140509381d96]
    );
}

#[test]
fn hash_weights_and_input_are_bit_exact() {
    let r = read_safetensors("hashinit_expected.safetensors");
    let sd = hash_state_dict();
    assert_eq!(sd.len(), 94 * 5);
    let mut checked = 0;
    for (key, t) in &r {
        let Some(rest) = key.strip_prefix("check.") else {
            continue;
        };
        let (name, _) = rest.split_once('[').unwrap();
        let ours = &sd[name].data[..t.data.len()];
        assert!(
            ours.iter().zip(&t.data).all(|(&a, &b)| a as f64 == b),
            "{key} differs: {ours:?}"
        );
        checked += 1;
    }
    let input = &r["input_32"];
    let ours = hash_uniforms("input_32", input.data.len());
    assert!(
        ours.iter().zip(&input.data).all(|(&a, &b)| a as f64 == b),
        "input_32 differs"
    );
    println!("bit-exact: input_32 and {checked} check tensors");
    assert!(checked >= 2);
}

/// Both paths: the native CPU kernels and candle's ops (what GPUs run), the latter on the CPU
/// or on `DEEDIFF_TEST_DEVICE` (`cuda`, in scripts/gpu_check.sh).
#[test]
fn hash_features_match_pytorch_fid() {
    let r = read_safetensors("hashinit_expected.safetensors");
    let native = FidInception::from_state_dict(&hash_state_dict()).unwrap();
    let device: DeviceSpec = std::env::var("DEEDIFF_TEST_DEVICE")
        .unwrap_or_else(|_| "cpu".into())
        .parse()
        .unwrap();
    let candle = native.clone().with_candle(&device.open().unwrap()).unwrap();
    let input = &r["input_32"];
    let [n, c, h, w] = input.shape[..] else {
        panic!("input_32 shape")
    };
    assert_eq!(c, 3);
    let data: Vec<f32> = input.data.iter().map(|&v| v as f32).collect();
    for (path, net) in [
        ("native", &native),
        (&*format!("candle on {device}"), &candle),
    ] {
        let blocks = net.blocks_nchw(&data, n, h, w, 3).unwrap();
        for f in &blocks {
            let expected = &r[&format!("feat{}", f.dims)];
            assert_eq!(expected.shape, vec![n, f.dims]);
            let ours: Vec<f64> = f.data.iter().map(|&v| v as f64).collect();
            let d = max_abs_diff(&ours, &expected.data);
            println!(
                "{path}: feat{}: max abs diff {d:.3e} over {n} images",
                f.dims
            );
            assert!(d <= 1e-4, "{path}: feat{} max abs diff {d}", f.dims);
        }
    }
}

#[test]
fn tensor_and_u8_inputs_match_the_f32_path() {
    let net = FidInception::from_state_dict(&hash_state_dict()).unwrap();
    let (n, h, w) = (2usize, 17usize, 23usize);
    let bytes: Vec<u8> = hash_uniforms("u8_images", n * h * w * 3)
        .iter()
        .map(|&u| (u * 256.0) as u8)
        .collect();
    let images: Vec<image::RgbImage> = bytes
        .chunks_exact(h * w * 3)
        .map(|c| image::RgbImage::from_raw(w as u32, h as u32, c.to_vec()).unwrap())
        .collect();
    let mut nchw = vec![0.0f32; n * 3 * h * w];
    for (i, img) in images.iter().enumerate() {
        for (p, px) in img.pixels().enumerate() {
            for c in 0..3 {
                nchw[(i * 3 + c) * h * w + p] = px.0[c] as f32 / 255.0;
            }
        }
    }
    let reference = net.features_nchw(&nchw, n, h, w, 192).unwrap();
    assert_eq!(net.features_rgb8(&images, 192).unwrap(), reference);
    let t = candle_core::Tensor::from_vec(nchw, (n, 3, h, w), &candle_core::Device::Cpu).unwrap();
    assert_eq!(net.features_tensor(&t, 192).unwrap(), reference);
    let u8_nchw = (&t * 255.0)
        .unwrap()
        .round()
        .unwrap()
        .to_dtype(candle_core::DType::U8)
        .unwrap();
    assert_eq!(net.features_tensor(&u8_nchw, 192).unwrap(), reference);
    assert!(net.features_tensor(&t, 100).is_err());
}
