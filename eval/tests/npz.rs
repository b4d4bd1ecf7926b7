//! `.npz` round trips: float64 statistics members and uint8 image batches (`arr_0`, NHWC).

use deediff_eval::npz::{read_npz, write_images_npz, write_npz, Array};

#[test]
fn images_and_statistics_round_trip() {
    let dir = std::env::temp_dir().join(format!("deediff-npz-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();

    let path = dir.join("images.npz");
    let image = |i: usize| -> Result<Vec<u8>, String> {
        Ok((0..2 * 3 * 3).map(|k| (i * 40 + k * 13) as u8).collect())
    };
    write_images_npz(&path, [5, 2, 3, 3], image).unwrap();
    let arrays = read_npz(&path).unwrap();
    let arr = &arrays["arr_0"];
    assert_eq!(arr.shape, vec![5, 2, 3, 3]);
    let expected: Vec<f64> = (0..5)
        .flat_map(|i| image(i).unwrap())
        .map(f64::from)
        .collect();
    assert_eq!(arr.data, expected);

    let err = write_images_npz(&path, [2, 2, 2, 3], |_| Ok::<_, String>(vec![0; 5])).unwrap_err();
    assert!(
        err.to_string().contains("image 0 has 5 bytes, expected 12"),
        "{err}"
    );

    let stats = Array {
        shape: vec![2, 2],
        data: vec![1.5, -2.0, 1e-300, 7.0],
    };
    let path = dir.join("stats.npz");
    write_npz(&path, &[("sigma", &stats)]).unwrap();
    assert_eq!(read_npz(&path).unwrap()["sigma"], stats);
}
