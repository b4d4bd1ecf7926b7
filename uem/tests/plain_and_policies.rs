//! Policy parsing/validation, and a plain U-ViT checkpoint (no certainty heads): it loads, runs
//! full depth and static exits, refuses threshold policies, and can get fresh heads for training;
//! with filled-exit heads only, `cached` runs and the truncation-head policies are refused.

use candle_core::{DType, Device};
use candle_nn::{VarBuilder, VarMap};
use deediff_uem::{CertaintyHeads, EarlyExitUVit, Error, ExitPolicy};
use deediff_unet::ConfigHints;

#[test]
fn policies_parse_and_validate() {
    assert_eq!(
        "official:0.9".parse(),
        Ok(ExitPolicy::Official { threshold: 0.9 })
    );
    assert_eq!(
        "per-sample:1".parse(),
        Ok(ExitPolicy::PerSample { threshold: 1.0 })
    );
    assert_eq!(
        "0.95".parse(),
        Ok(ExitPolicy::PerSample { threshold: 0.95 })
    );
    assert_eq!("full".parse(), Ok(ExitPolicy::Full));
    assert_eq!("static:7".parse(), Ok(ExitPolicy::Static { blocks: 7 }));
    for bad in [0.0, -0.1, 1.0001, f32::NAN] {
        assert!(
            matches!(ExitPolicy::official(bad), Err(Error::Threshold(_))),
            "{bad}"
        );
        assert!(
            matches!(ExitPolicy::per_sample(bad), Err(Error::Threshold(_))),
            "{bad}"
        );
    }
    assert_eq!(
        "official:1.5".parse::<ExitPolicy>(),
        Err(Error::Threshold(1.5))
    );
    assert_eq!("static:0".parse::<ExitPolicy>(), Err(Error::StaticDepth(0)));
    assert!(matches!(
        "sometimes".parse::<ExitPolicy>(),
        Err(Error::Syntax(_))
    ));
    let p = ExitPolicy::per_sample(0.9).unwrap();
    assert_eq!(p.to_string().parse(), Ok(p));
}

#[test]
fn plain_checkpoint_runs_full_depth_and_static() {
    let dir = std::env::temp_dir().join(format!("deediff-uem-plain-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    for case in deediff_testkit::cases() {
        let src = deediff_testkit::reference_dir("uvit")
            .join(format!("{}.weights.safetensors", case.name));
        let mut tensors = candle_core::safetensors::load(&src, &Device::Cpu).unwrap();
        tensors.retain(|k, _| !k.starts_with("lte_classifer."));
        let path = dir.join(format!("{}.weights.safetensors", case.name));
        candle_core::safetensors::save(&tensors, &path).unwrap();
        std::fs::copy(
            deediff_testkit::reference_dir("uvit").join(format!("{}.config.json", case.name)),
            dir.join(format!("{}.config.json", case.name)),
        )
        .unwrap();

        let ee = EarlyExitUVit::load(&path, &ConfigHints::default(), &Device::Cpu).unwrap();
        assert!(ee.heads().is_none());
        let (x, t, cond) = (case.get("x_t"), case.get("timesteps"), case.conditioning());
        let full = ee.forward(x, t, &cond, &ExitPolicy::Full).unwrap();
        deediff_testkit::assert_close(
            &format!("{}: full", case.name),
            &full.eps,
            case.get("eps"),
            1e-4,
        );
        let n = ee.model().num_blocks();
        for s in &full.samples {
            assert_eq!((s.blocks_executed, s.macs), (n, s.full_depth_macs));
        }
        for k in 1..=n {
            let out = ee
                .forward(x, t, &cond, &ExitPolicy::fixed_depth(k).unwrap())
                .unwrap();
            let reference = case.get(&format!("exit_eps.{}", k - 1));
            deediff_testkit::assert_close(
                &format!("{}: static:{k}", case.name),
                &out.eps,
                reference,
                1e-4,
            );
            assert_eq!(out.samples[0].macs, ee.model().macs().truncated(k));
            assert!(k == n || out.samples[0].macs < out.samples[0].full_depth_macs);
        }
        let err = ee
            .forward(x, t, &cond, &ExitPolicy::official(0.5).unwrap())
            .unwrap_err()
            .to_string();
        assert!(err.contains("no certainty heads"), "{err}");

        // Fresh heads for training: official init (bias 0, weight std 0.02) → maps near 0.5.
        let varmap = VarMap::new();
        let vb = VarBuilder::from_varmap(&varmap, DType::F32, &Device::Cpu);
        let heads = CertaintyHeads::new(ee.model().config(), vb).unwrap();
        assert_eq!(heads.len(), n);
        let vars = varmap.data().lock().unwrap();
        assert_eq!(vars.len(), 2 * n);
        let bias = vars["lte_classifer.0.lte.bias"].as_tensor();
        assert_eq!(
            bias.abs()
                .unwrap()
                .sum_all()
                .unwrap()
                .to_scalar::<f32>()
                .unwrap(),
            0.0
        );
        let w = vars["lte_classifer.0.lte.weight"]
            .as_tensor()
            .flatten_all()
            .unwrap();
        let std = w
            .sqr()
            .unwrap()
            .mean_all()
            .unwrap()
            .to_scalar::<f32>()
            .unwrap()
            .sqrt();
        assert!((std - 0.02).abs() < 0.004, "fresh head weight std {std}");

        // Filled-exit heads only: `cached` decides with them; every policy that reads the
        // truncation heads (or a reuse schedule) is refused, by the same check the sampler uses.
        let mut ee = ee;
        let vb = VarBuilder::from_varmap(&VarMap::new(), DType::F32, &Device::Cpu);
        let filled = CertaintyHeads::filled(ee.model().config(), vb).unwrap();
        ee.set_filled_heads(Some(filled));
        let cached: ExitPolicy = "cached:0.9:2".parse().unwrap();
        assert_eq!(ee.unsupported(&cached), None);
        ee.forward(x, t, &cond, &cached).unwrap();
        for refused in [
            "cached-trunc:0.9:2",
            "per-sample:0.9",
            "official:0.9",
            "l2c",
        ] {
            let policy: ExitPolicy = refused.parse().unwrap();
            assert!(ee.unsupported(&policy).is_some(), "{refused}");
            assert!(ee.forward(x, t, &cond, &policy).is_err(), "{refused}");
        }
    }
}
