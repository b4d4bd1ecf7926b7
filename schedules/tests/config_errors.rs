//! diffusers `scheduler_config.json` handling: the verbatim files diffusers writes (bare
//! `-Infinity`) parse; unknown fields, classes, unsupported and contradictory settings are
//! clear errors.

use deediff_schedules::{
    quote_non_finite, DdimConfig, DdpmConfig, DpmMultistepConfig, Error, Scheduler,
    SchedulerConfig, SCHEDULER_NAMES,
};
use serde_json::Value;
use std::path::PathBuf;

/// `$DEEDIFF_REFERENCE/schedules` if set, else the committed fixtures.
fn fixtures() -> PathBuf {
    match std::env::var_os("DEEDIFF_REFERENCE") {
        Some(root) => PathBuf::from(root).join("schedules"),
        None => PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/schedules"),
    }
}

fn err(json: &str) -> String {
    match SchedulerConfig::from_diffusers_json(json) {
        Ok(c) => panic!("expected an error, parsed {c:?}"),
        Err(e) => e.to_string(),
    }
}

const DPM: &str = r#"{"_class_name": "DPMSolverMultistepScheduler", "_diffusers_version": "0.42.1",
  "algorithm_type": "dpmsolver++", "lambda_min_clipped": -Infinity, "trained_betas": null,
  "variance_type": null, "final_sigmas_type": "zero", "solver_order": 2}"#;

#[test]
fn verbatim_diffusers_files_parse() {
    let index: Value =
        serde_json::from_str(&std::fs::read_to_string(fixtures().join("index.json")).unwrap())
            .unwrap();
    let (mut n, mut diffusers) = (0, 0);
    for case in index["cases"].as_array().unwrap() {
        diffusers += (case["source"] == "diffusers") as usize;
        let Some(text) = case["config_json_verbatim"].as_str() else {
            continue;
        };
        let verbatim = SchedulerConfig::from_diffusers_json(text)
            .unwrap_or_else(|e| panic!("{}: {e}", case["name"]));
        let strict = SchedulerConfig::from_diffusers_json(&case["config"].to_string()).unwrap();
        assert_eq!(verbatim, strict, "{}", case["name"]);
        n += 1;
    }
    assert!(n > 0);
    assert_eq!(
        n, diffusers,
        "every diffusers case carries its verbatim config"
    );
}

#[test]
fn non_finite_tokens() {
    let text = r#"{"a": -Infinity, "b": [Infinity, NaN], "c": "-Infinity NaN \" Infinity"}"#;
    let v: Value = serde_json::from_str(&quote_non_finite(text)).unwrap();
    assert_eq!(v["a"], "-Infinity");
    assert_eq!(v["b"][1], "NaN");
    assert_eq!(v["c"], "-Infinity NaN \" Infinity");
    let config = SchedulerConfig::from_diffusers_json(DPM).unwrap();
    let c = config
        .get::<DpmMultistepConfig>()
        .expect("DPMSolverMultistepScheduler");
    assert_eq!(c.lambda_min_clipped, f64::NEG_INFINITY);
    // A finite clip moves the last usable timestep.
    let clipped = DPM.replace("-Infinity", "-3.0");
    let s = Scheduler::new(&SchedulerConfig::from_diffusers_json(&clipped).unwrap(), 10).unwrap();
    assert!(s.timesteps()[0] < 999.0);
}

#[test]
fn unknown_field_is_an_error() {
    let e = err(&DPM.replace("\"solver_order\"", "\"solver_orderz\""));
    assert!(e.contains("unknown field \"solver_orderz\""), "{e}");
    // A field of another class is unknown here too.
    let e = err(r#"{"_class_name": "EulerDiscreteScheduler", "set_alpha_to_one": true}"#);
    assert!(e.contains("set_alpha_to_one"), "{e}");
}

#[test]
fn unknown_class_is_an_error() {
    let e = err(r#"{"_class_name": "PNDMScheduler", "skip_prk_steps": true}"#);
    assert!(
        e.contains("unsupported scheduler class \"PNDMScheduler\""),
        "{e}"
    );
    assert!(err(r#"{"beta_start": 0.1}"#).contains("_class_name"));
}

#[test]
fn contradictory_fields_are_errors() {
    let e = err(&DPM.replace("dpmsolver++", "dpmsolver"));
    assert!(e.contains("final_sigmas_type"), "{e}");
    let single =
        r#"{"_class_name": "DPMSolverSinglestepScheduler", "algorithm_type": "dpmsolver"}"#;
    assert!(err(single).contains("final_sigmas_type"));
}

#[test]
fn unsupported_settings_are_errors() {
    assert!(
        err(&DPM.replace("\"solver_order\": 2", "\"solver_order\": 4")).contains("solver_order 4")
    );
    assert!(err(&DPM.replace(
        "\"variance_type\": null",
        "\"variance_type\": \"learned_range\""
    ))
    .contains("variance_type"));
    let e = err(r#"{"_class_name": "DDIMScheduler", "thresholding": true}"#);
    assert!(e.contains("thresholding"), "{e}");
    let e = err(r#"{"_class_name": "DDIMScheduler", "beta_schedule": "sigmoid"}"#);
    assert!(e.contains("beta_schedule \"sigmoid\""), "{e}");
    let e = err(r#"{"_class_name": "DDIMScheduler", "timestep_spacing": "uniform"}"#);
    assert!(e.contains("timestep_spacing"), "{e}");
    let e = err(r#"{"_class_name": "UniPCMultistepScheduler", "solver_type": "midpoint"}"#);
    assert!(e.contains("bh1, bh2"), "{e}");
    let e = err(r#"{"_class_name": "DDPMScheduler", "variance_type": "learned"}"#);
    assert!(e.contains("variance_type"), "{e}");
    assert!(err("{not json").contains("invalid JSON"));
}

#[test]
fn harmless_fields_are_accepted() {
    let json = r#"{"_class_name": "DDPMScheduler", "_diffusers_version": "0.42.1",
      "trained_betas": null, "variance_type": "fixed_small", "dynamic_thresholding_ratio": 0.995,
      "sample_max_value": 1.0, "thresholding": false, "clip_sample": false}"#;
    let config = SchedulerConfig::from_diffusers_json(json).unwrap();
    let c = config.get::<DdpmConfig>().expect("DDPMScheduler");
    assert_eq!(c.clip_sample, None);
    // diffusers defaults: DDIM/DDPM clip x0 to ±1 unless told otherwise (README Q12).
    let config = SchedulerConfig::from_diffusers_json(r#"{"_class_name": "DDIMScheduler"}"#);
    let c = config
        .unwrap()
        .get::<DdimConfig>()
        .cloned()
        .expect("DDIMScheduler");
    assert_eq!(c.clip_sample, Some(1.0));
}

#[test]
fn file_errors_name_the_file() {
    let missing = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("no_such_scheduler_config.json");
    let e = SchedulerConfig::from_file(&missing).unwrap_err();
    assert!(matches!(e, Error::Io { .. }));
    assert!(
        e.to_string().contains("no_such_scheduler_config.json"),
        "{e}"
    );
}

#[test]
fn presets_build_and_reject_unknown_names() {
    for name in SCHEDULER_NAMES {
        let s = Scheduler::by_name(name, 20).unwrap_or_else(|e| panic!("{name}: {e}"));
        assert!(s.nfe() >= 1, "{name}");
    }
    let e = Scheduler::by_name("plms", 20).unwrap_err().to_string();
    assert!(e.contains("unknown scheduler \"plms\""), "{e}");
}
