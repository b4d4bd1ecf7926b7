//! The official exit decision reproduces every row of `exit_logic.safetensors` exactly.

use candle_core::Device;
use deediff_uem::ExitRule;
use deediff_unet::Variant;

#[test]
fn exit_rule_matches_official_tables() {
    let path = deediff_testkit::reference_dir("uvit").join("exit_logic.safetensors");
    let tables = candle_core::safetensors::load(&path, &Device::Cpu).unwrap();
    let mut names: Vec<&str> = tables
        .keys()
        .filter_map(|k| k.strip_suffix(".means"))
        .collect();
    names.sort();
    assert!(!names.is_empty(), "no tables in {}", path.display());
    let mut rows = 0;
    for name in names {
        let means = tables[&format!("{name}.means")].to_vec2::<f32>().unwrap();
        let thres = tables[&format!("{name}.thres")].to_vec1::<f32>().unwrap();
        let expected = tables[&format!("{name}.num_blocks")]
            .to_vec1::<i64>()
            .unwrap();
        let variant = if name.contains("t2i") {
            Variant::UvitT2i
        } else {
            Variant::Uvit
        };
        for ((m, &th), &want) in means.iter().zip(&thres).zip(&expected) {
            let rule = ExitRule::new(variant, (m.len() - 1) / 2, th);
            let got = rule.blocks_run(m);
            assert_eq!(got as i64, want, "{name}: means {m:?} thres {th}");
            rows += 1;
        }
        eprintln!("{name}: {} rows, {variant:?}", means.len());
    }
    eprintln!("{rows} exit-logic rows matched");
}
