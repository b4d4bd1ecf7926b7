//! Every reference case of `reference/schedules` (diffusers 0.42.1 and U-ViT, driven by the exact
//! denoiser of a Gaussian mixture), rebuilt from its `config` / `uvit_args` alone and compared
//! step by step. The mixture, the noise and the expected values all come from the files.

use deediff_schedules::{
    sample, BetaConfig, BetaSchedule, DdimConfig, ModelTime, NoNoise, NoiseSource, ReplayNoise,
    ReverseProcess, Scheduler, SchedulerConfig, SkipType, UvitDpmConfig, UvitEmConfig, UvitMethod,
    UvitScheduleConfig, UvitSolverType,
};
use safetensors::{Dtype, SafeTensors};
use serde_json::Value;
use std::collections::HashMap;
use std::path::{Path, PathBuf};

/// A float64 tensor from a safetensors file.
#[derive(Debug, Clone)]
struct Tensor {
    shape: Vec<usize>,
    data: Vec<f64>,
}

impl Tensor {
    fn rows(&self) -> Vec<&[f64]> {
        let n = self.shape.first().copied().unwrap_or(1).max(1);
        let w = self.data.len() / n;
        self.data.chunks(w.max(1)).collect()
    }
}

fn load(path: &Path) -> HashMap<String, Tensor> {
    let bytes = std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let st = SafeTensors::deserialize(&bytes).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    st.tensors()
        .into_iter()
        .map(|(name, view)| {
            assert_eq!(
                view.dtype(),
                Dtype::F64,
                "{}: {name} is not F64",
                path.display()
            );
            let data = view
                .data()
                .chunks_exact(8)
                .map(|c| f64::from_le_bytes(c.try_into().unwrap()))
                .collect();
            (
                name,
                Tensor {
                    shape: view.shape().to_vec(),
                    data,
                },
            )
        })
        .collect()
}

fn reference_dir() -> PathBuf {
    let dir = match std::env::var_os("DEEDIFF_REFERENCE") {
        Some(root) => PathBuf::from(root).join("schedules"),
        None => PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/schedules"),
    };
    println!("reference folder: {}", dir.display());
    dir
}

/// The exact posterior of the Gaussian mixture (README §2.1).
struct Mixture {
    mu: Vec<Vec<f64>>,
    std: Vec<f64>,
    weight: Vec<f64>,
    d: usize,
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Output {
    Epsilon,
    Sample,
    V,
}

impl Mixture {
    fn new(common: &HashMap<String, Tensor>) -> Self {
        let mu_t = &common["mixture_mu"];
        let d = mu_t.shape[1];
        Self {
            mu: mu_t.data.chunks(d).map(|c| c.to_vec()).collect(),
            std: common["mixture_std"].data.clone(),
            weight: common["mixture_weight"].data.clone(),
            d,
        }
    }

    fn eval(&self, x: &[f64], alpha: f64, sigma: f64, what: Output) -> Vec<f64> {
        let d = self.d;
        let mut out = Vec::with_capacity(x.len());
        for row in x.chunks(d) {
            let v: Vec<f64> = self
                .std
                .iter()
                .map(|s| alpha * alpha * s * s + sigma * sigma)
                .collect();
            let ll: Vec<f64> = (0..self.mu.len())
                .map(|k| {
                    let sq: f64 = row
                        .iter()
                        .zip(&self.mu[k])
                        .map(|(x, m)| (x - alpha * m).powi(2))
                        .sum();
                    self.weight[k].ln()
                        - 0.5 * d as f64 * (2.0 * std::f64::consts::PI * v[k]).ln()
                        - sq / (2.0 * v[k])
                })
                .collect();
            let max = ll.iter().copied().fold(f64::NEG_INFINITY, f64::max);
            let e: Vec<f64> = ll.iter().map(|l| (l - max).exp()).collect();
            let z: f64 = e.iter().sum();
            let r: Vec<f64> = e.iter().map(|e| e / z).collect();
            for (j, &xj) in row.iter().enumerate() {
                let (mut eps, mut x0) = (0.0, 0.0);
                for k in 0..self.mu.len() {
                    let dev = xj - alpha * self.mu[k][j];
                    eps += r[k] * sigma * dev / v[k];
                    x0 += r[k] * (self.mu[k][j] + alpha * self.std[k].powi(2) / v[k] * dev);
                }
                out.push(match what {
                    Output::Epsilon => eps,
                    Output::Sample => x0,
                    Output::V => alpha * eps - sigma * x0,
                });
            }
        }
        out
    }
}

/// Largest |a − b| (NaN counts as infinite).
fn max_abs_diff(a: &[f64], b: &[f64]) -> f64 {
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(b)
        .map(|(x, y)| {
            let d = (x - y).abs();
            if d.is_nan() {
                f64::INFINITY
            } else {
                d
            }
        })
        .fold(0.0, f64::max)
}

fn scale(r: &[f64]) -> f64 {
    r.iter().fold(1.0_f64, |m, v| m.max(v.abs()))
}

/// Checks one quantity and records the worst relative deviation.
struct Checker<'a> {
    case: &'a str,
    /// Integer-valued schedule (diffusers outside the Euler family): timesteps must be exact.
    integer_times: bool,
    failures: Vec<String>,
    worst_rel: f64,
    worst_what: String,
    /// Worst |Δ|/max(1, max|ref|) over the sampler states (traj rows and x_final).
    worst_state: f64,
}

impl Checker<'_> {
    fn close(&mut self, what: &str, ours: &[f64], reference: &[f64], tol: f64) {
        if ours.len() != reference.len() {
            self.failures.push(format!(
                "{}: {what}: length {} vs reference {}",
                self.case,
                ours.len(),
                reference.len()
            ));
            return;
        }
        let s = scale(reference);
        let d = max_abs_diff(ours, reference);
        if what.starts_with("traj") || what == "x_final" {
            self.worst_state = self.worst_state.max(d / s);
        }
        if d / s > self.worst_rel {
            self.worst_rel = d / s;
            self.worst_what = what.to_string();
        }
        if d > tol * s {
            self.failures.push(format!(
                "{}: {what}: |Δ| = {d:e} > {:e}",
                self.case,
                tol * s
            ));
        }
    }

    /// Times: exact for integer schedules, 1e-9 otherwise.
    fn times(&mut self, what: &str, ours: &[f64], reference: &[f64]) {
        if ours.len() != reference.len() {
            self.failures.push(format!(
                "{}: {what}: length {} vs reference {}",
                self.case,
                ours.len(),
                reference.len()
            ));
            return;
        }
        for (i, (o, r)) in ours.iter().zip(reference).enumerate() {
            let ok = if self.integer_times {
                o == r
            } else {
                (o - r).abs() <= 1e-9
            };
            if !ok {
                self.failures
                    .push(format!("{}: {what}[{i}]: {o} vs reference {r}", self.case));
                return;
            }
        }
    }

    fn relative(&mut self, what: &str, ours: &[f64], reference: &[f64], tol: f64) {
        if ours.len() != reference.len() {
            self.failures
                .push(format!("{}: {what}: length mismatch", self.case));
            return;
        }
        for (i, (o, r)) in ours.iter().zip(reference).enumerate() {
            if (o - r).abs() > tol * r.abs() {
                self.failures
                    .push(format!("{}: {what}[{i}]: {o} vs reference {r}", self.case));
                return;
            }
        }
    }

    fn equal(&mut self, what: &str, ours: &[usize], reference: &[usize]) {
        if ours != reference {
            self.failures.push(format!(
                "{}: {what}: {ours:?} vs reference {reference:?}",
                self.case
            ));
        }
    }
}

fn uvit_config(args: &Value, time_input: &str) -> SchedulerConfig {
    let f = |k: &str| args[k].as_f64().unwrap_or_else(|| panic!("uvit_args.{k}"));
    let s = |k: &str| args[k].as_str().unwrap_or_else(|| panic!("uvit_args.{k}"));
    let time_input_scale = if time_input.contains("1000") {
        1000.0
    } else {
        999.0
    };
    if let Some(reverse) = args.get("reverse") {
        return SchedulerConfig::new(UvitEmConfig {
            beta_min: 0.1,
            beta_max: 20.0,
            reverse: match reverse.as_str() {
                Some("sde") => ReverseProcess::Sde,
                Some("ode") => ReverseProcess::Ode,
                other => panic!("uvit_args.reverse {other:?}"),
            },
            eps: f("eps"),
            t_end: 1.0,
            time_input_scale,
        });
    }
    let schedule = match s("schedule") {
        "discrete" => UvitScheduleConfig::Discrete(BetaConfig {
            schedule: BetaSchedule::ScaledLinear {
                start: 0.00085,
                end: 0.012,
            },
            num_train_timesteps: 1000,
            rescale_betas_zero_snr: false,
        }),
        "linear" => UvitScheduleConfig::vp_linear(),
        other => panic!("schedule {other}"),
    };
    // Without `method` the case is dpm_solver_pytorch's fast path (U-ViT CIFAR eval.py).
    let Some(method) = args.get("method").and_then(Value::as_str) else {
        return SchedulerConfig::new(UvitDpmConfig {
            schedule,
            time_input_scale,
            predict_x0: false,
            method: UvitMethod::PytorchFast,
            order: 3,
            skip_type: SkipType::LogSnr,
            solver_type: UvitSolverType::DpmSolver,
            eps: f("eps"),
            t_end: 1.0,
            denoise: false,
        });
    };
    SchedulerConfig::new(UvitDpmConfig {
        schedule,
        time_input_scale,
        predict_x0: args["predict_x0"].as_bool().unwrap(),
        method: match method {
            "fast" => UvitMethod::Fast,
            "singlestep" => UvitMethod::Singlestep,
            "multistep" => UvitMethod::Multistep,
            other => panic!("method {other}"),
        },
        order: f("order") as usize,
        skip_type: match s("skip_type") {
            "logSNR" => SkipType::LogSnr,
            "time_uniform" => SkipType::TimeUniform,
            other => panic!("skip_type {other}"),
        },
        solver_type: match s("solver_type") {
            "dpm_solver" => UvitSolverType::DpmSolver,
            "taylor" => UvitSolverType::Taylor,
            other => panic!("solver_type {other}"),
        },
        eps: f("eps"),
        t_end: f("T"),
        denoise: args["denoise"].as_bool().unwrap(),
    })
}

/// Noise the extra cases compute instead of storing (scripts/make_schedule_extra_references.py):
/// splitmix64 → 53-bit uniforms → the sum of 12 minus 6, `rows` draws of `width` values.
fn rule_noise(rule: &Value, width: usize) -> Option<Vec<Vec<f64>>> {
    assert_eq!(
        rule.get("kind")?,
        "splitmix64_irwin_hall12",
        "noise_rule {rule}"
    );
    let mut state = rule["seed"].as_u64().unwrap();
    let mut uniform = || {
        state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = state;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^= z >> 31;
        (z >> 11) as f64 * (1.0 / 9_007_199_254_740_992.0)
    };
    let rows = rule["rows"].as_u64().unwrap() as usize;
    let mut draw = || (0..12).fold(0.0, |acc, _| acc + uniform()) - 6.0;
    Some(
        (0..rows)
            .map(|_| (0..width).map(|_| draw()).collect())
            .collect(),
    )
}

fn to_usize(v: &[f64]) -> Vec<usize> {
    v.iter().map(|&x| x as usize).collect()
}

/// Run one case and check everything it stores; returns the failures, a description of the
/// worst deviation, the worst |Δ|/max(1, max|ref|) overall and over the sampler states.
fn run_case(
    dir: &Path,
    case: &Value,
    mixture: &Mixture,
    z: &[f64],
) -> (Vec<String>, String, f64, f64) {
    let name = case["name"].as_str().unwrap();
    let t = load(&dir.join(case["file"].as_str().unwrap()));
    // k-diffusion cases are checked like diffusers ones, with fractional model times.
    let kdiffusion = case["source"] == "kdiffusion";
    let diffusers = case["source"] == "diffusers" || kdiffusion;
    let euler = case["scheduler_class"]
        .as_str()
        .is_some_and(|c| c.starts_with("Euler"));
    let mut ck = Checker {
        case: name,
        integer_times: diffusers && !euler && !kdiffusion,
        failures: vec![],
        worst_rel: 0.0,
        worst_what: String::new(),
        worst_state: 0.0,
    };
    let (config, steps, what) = if diffusers {
        let mut config = match case["preset"].as_str() {
            Some(preset) => SchedulerConfig::by_name(preset, BetaConfig::ddpm_linear(1000)),
            None => SchedulerConfig::from_diffusers_json(&case["config"].to_string()),
        }
        .unwrap_or_else(|e| panic!("{name}: {e}"));
        if let Some(eta) = case["step_kwargs"]
            .get("eta")
            .and_then(Value::as_f64)
            .filter(|_| !kdiffusion)
        {
            let Some(c) = config.get_mut::<DdimConfig>() else {
                panic!("{name}: eta for a non-DDIM scheduler")
            };
            c.eta = eta;
        }
        let what = match case["prediction_type"].as_str().unwrap() {
            "epsilon" => Output::Epsilon,
            "sample" => Output::Sample,
            "v_prediction" => Output::V,
            other => panic!("{name}: prediction_type {other}"),
        };
        (
            config,
            case["num_inference_steps"].as_u64().unwrap() as usize,
            what,
        )
    } else {
        let args = &case["uvit_args"];
        let config = uvit_config(args, case["time_input"].as_str().unwrap());
        (
            config,
            args["steps"].as_u64().unwrap() as usize,
            Output::Epsilon,
        )
    };
    let scheduler = Scheduler::new(&config, steps).unwrap_or_else(|e| panic!("{name}: {e}"));

    if diffusers {
        ck.times("timesteps", &scheduler.timesteps(), &t["timesteps"].data);
        if let Some(s) = t.get("sigmas") {
            ck.relative("sigmas", scheduler.sigmas().unwrap_or(&[]), &s.data, 1e-12);
        }
        let ins = case["init_noise_sigma"].as_f64().unwrap();
        ck.relative(
            "init_noise_sigma",
            &[scheduler.init_noise_sigma()],
            &[ins],
            1e-12,
        );
    } else {
        ck.times("step_t", &scheduler.timesteps(), &t["step_t"].data);
    }
    assert_eq!(
        scheduler.nfe(),
        case["nfe"].as_u64().unwrap() as usize,
        "{name}: nfe"
    );
    let planned: Vec<f64> = scheduler.model_times().iter().map(|m| m.t).collect();
    let key = if diffusers { "model_t" } else { "model_tin" };
    ck.times(&format!("{key} (planned)"), &planned, &t[key].data);

    let x_init: Vec<f64> = z.iter().map(|v| v * scheduler.init_noise_sigma()).collect();
    ck.close("x_init", &x_init, &t["x_init"].data, 1e-12);

    let rows: Option<Vec<Vec<f64>>> = t
        .get("noise")
        .map(|n| n.rows().iter().map(|r| r.to_vec()).collect())
        .or_else(|| rule_noise(&case["noise_rule"], z.len()));
    let noise_rows = rows.as_ref().map(Vec::len);
    let mut replay = rows.map(ReplayNoise::new);
    let mut no_noise = NoNoise;
    let noise: &mut dyn NoiseSource = match replay.as_mut() {
        Some(r) => r,
        None => &mut no_noise,
    };
    let mut outs: Vec<Vec<f64>> = Vec::new();
    let mut states = vec![x_init];
    let mut pred_x0: Vec<Vec<f64>> = Vec::new();
    let mut step_t = vec![];
    let model = |x: &[f64], mt: ModelTime| {
        let o = mixture.eval(x, mt.alpha, mt.sigma, what);
        outs.push(o.clone());
        Ok(o)
    };
    let result = sample(&scheduler, z, model, noise, |info, x| {
        states.push(x.to_vec());
        if let Some(p) = &info.pred_x0 {
            pred_x0.push(p.clone());
        }
        if let Some(tc) = info.t {
            step_t.push(tc);
        }
    })
    .unwrap_or_else(|e| panic!("{name}: {e}"));

    let times: Vec<f64> = result.model_times.iter().map(|m| m.t).collect();
    ck.times(key, &times, &t[key].data);
    let alphas: Vec<f64> = result.model_times.iter().map(|m| m.alpha).collect();
    let sigmas: Vec<f64> = result.model_times.iter().map(|m| m.sigma).collect();
    ck.close("model_alpha", &alphas, &t["model_alpha"].data, 1e-12);
    ck.close("model_sigma", &sigmas, &t["model_sigma"].data, 1e-12);
    for (row, &k) in t["model_out"].rows().iter().zip(&t["model_out_index"].data) {
        let ours = outs.get(k as usize).map(Vec::as_slice).unwrap_or(&[]);
        ck.close(&format!("model_out[{k}]"), ours, row, 1e-10);
    }
    if let Some(p) = t.get("pred_x0") {
        for (row, &k) in p.rows().iter().zip(&t["model_out_index"].data) {
            let ours = pred_x0.get(k as usize).map(Vec::as_slice).unwrap_or(&[]);
            ck.close(&format!("pred_x0[{k}]"), ours, row, 1e-10);
        }
    }
    for (row, &k) in t["traj"].rows().iter().zip(&t["traj_index"].data) {
        let ours = states.get(k as usize).map(Vec::as_slice).unwrap_or(&[]);
        ck.close(&format!("traj[{k}]"), ours, row, 1e-10);
    }
    ck.close("x_final", &result.x, &t["x_final"].data, 1e-10);
    if let Some(orders) = case["solver_orders"].as_array() {
        let reference: Vec<usize> = orders
            .iter()
            .map(|o| o.as_u64().unwrap() as usize)
            .collect();
        ck.equal("solver_orders", &result.orders, &reference);
        ck.equal("planned orders", &scheduler.orders(), &reference);
    }
    if let Some(so) = t.get("step_order") {
        ck.equal("step_order", &result.orders, &to_usize(&so.data));
    }
    if !diffusers {
        ck.times("step_t (run)", &step_t, &t["step_t"].data[1..]);
    }
    if let (Some(rows), Some(r)) = (noise_rows, &replay) {
        // Draws happen exactly where the reference drew (README §2.3).
        let expected = match case["noise_used"].as_array() {
            Some(used) => used.iter().filter(|u| u.as_u64() == Some(1)).count(),
            None => rows,
        };
        if r.consumed() != expected {
            ck.failures.push(format!(
                "{name}: {} noise draws, the reference drew {expected}",
                r.consumed()
            ));
        }
    }
    let worst = format!(
        "{:.2e} in {} (states {:.2e})",
        ck.worst_rel, ck.worst_what, ck.worst_state
    );
    (ck.failures, worst, ck.worst_rel, ck.worst_state)
}

#[test]
fn analytic_model_matches_check_vectors() {
    let dir = reference_dir();
    let common = load(&dir.join("common.safetensors"));
    let mixture = Mixture::new(&common);
    let x = &common["check/x"].data;
    let mut worst: f64 = 0.0;
    for (l, (&a, &s)) in common["check/alpha"]
        .data
        .iter()
        .zip(&common["check/sigma"].data)
        .enumerate()
    {
        for (key, what) in [
            ("check/epsilon", Output::Epsilon),
            ("check/sample", Output::Sample),
            ("check/v_prediction", Output::V),
        ] {
            let reference = common[key].rows()[l];
            let d = max_abs_diff(&mixture.eval(x, a, s, what), reference);
            worst = worst.max(d);
            assert!(d <= 1e-12, "{key} at level {l}: |Δ| = {d:e}");
        }
    }
    println!("analytic model: worst |Δ| = {worst:e}");
}

#[test]
fn beta_tables_match() {
    let dir = reference_dir();
    let common = load(&dir.join("common.safetensors"));
    let cases = [
        (
            "linear",
            BetaSchedule::Linear {
                start: 1e-4,
                end: 0.02,
            },
            false,
        ),
        (
            "scaled_linear",
            BetaSchedule::ScaledLinear {
                start: 0.00085,
                end: 0.012,
            },
            false,
        ),
        ("squaredcos_cap_v2", BetaSchedule::SquaredCosCapV2, false),
        (
            "scaled_linear_zsnr",
            BetaSchedule::ScaledLinear {
                start: 0.00085,
                end: 0.012,
            },
            true,
        ),
    ];
    for (key, schedule, zsnr) in cases {
        let cfg = BetaConfig {
            schedule,
            num_train_timesteps: 1000,
            rescale_betas_zero_snr: zsnr,
        };
        let betas = cfg.betas().unwrap();
        let ac = cfg.alphas_cumprod().unwrap();
        let db = max_abs_diff(&betas, &common[&format!("betas/{key}")].data);
        let da = max_abs_diff(&ac, &common[&format!("alphas_cumprod/{key}")].data);
        println!("{key}: betas |Δ| = {db:e}, alphas_cumprod |Δ| = {da:e}");
        assert!(
            db <= 1e-14 && da <= 1e-14,
            "{key}: betas {db:e}, alphas_cumprod {da:e}"
        );
    }
}

/// Runs every case of the set in `dir` (mixture and z from `common`); returns the number run.
fn run_set(dir: &Path, common: &HashMap<String, Tensor>) -> usize {
    let index: Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("index.json")).unwrap()).unwrap();
    let mixture = Mixture::new(common);
    let z = common["z"].data.clone();
    let cases = index["cases"].as_array().unwrap();
    let only = std::env::var("CASE").ok();
    let (mut ran, mut failures) = (0, vec![]);
    let (mut worst_rel, mut worst_state, mut worst_case) = (0.0_f64, 0.0_f64, String::new());
    for case in cases {
        let name = case["name"].as_str().unwrap();
        if only.as_deref().is_some_and(|o| !name.contains(o)) {
            continue;
        }
        let (f, worst, rel, state) = run_case(dir, case, &mixture, &z);
        println!(
            "{name:45} {} worst |Δ|/max(1,|ref|) = {worst}",
            if f.is_empty() { "ok  " } else { "FAIL" }
        );
        if rel > worst_rel {
            worst_rel = rel;
            worst_case = name.to_string();
        }
        worst_state = worst_state.max(state);
        failures.extend(f);
        ran += 1;
    }
    println!(
        "ran {ran} of {} cases; worst |Δ|/max(1,|ref|): {worst_rel:.2e} ({worst_case}), over traj/x_final {worst_state:.2e}",
        cases.len()
    );
    for f in failures.iter().take(60) {
        println!("  {f}");
    }
    assert!(failures.is_empty(), "{} checks failed", failures.len());
    if only.is_none() {
        assert_eq!(ran, cases.len(), "fewer cases ran than the index lists");
    }
    ran
}

#[test]
fn all_reference_cases() {
    let dir = reference_dir();
    run_set(&dir, &load(&dir.join("common.safetensors")));
}

/// The cases of `tests/fixtures/extra` (scripts/make_schedule_extra_references.py): diffusers'
/// multistep solvers at 1000 steps, where the DPM linspace rule repeats timestep 500, and
/// k-diffusion's DPM++ 2S ancestral (the `dpmpp-2s-a` preset, η = 1).
#[test]
fn extra_reference_cases() {
    let common = load(&reference_dir().join("common.safetensors"));
    let extra = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/extra");
    run_set(&extra, &common);
}
