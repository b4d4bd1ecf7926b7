//! Reading diffusers `scheduler_config.json` files. The file is the contract: every field
//! diffusers writes for the class is accepted (including the ones without effect), unknown
//! fields, unknown classes and unsupported or contradictory settings are errors.
//!
//! diffusers writes non-finite floats as bare `-Infinity` / `Infinity` / `NaN` tokens (invalid
//! JSON); they are rewritten to strings before parsing, and float fields accept either form.

use crate::betas::{BetaConfig, BetaSchedule};
use crate::ddim::DdimConfig;
use crate::ddpm::DdpmConfig;
use crate::dpm_multistep::{check_final_sigmas, AlgorithmType, DpmMultistepConfig, DpmSolverType};
use crate::dpm_singlestep::DpmSinglestepConfig;
use crate::error::{Error, Result};
use crate::euler::EulerConfig;
use crate::euler_ancestral::EulerAncestralConfig;
use crate::prediction::PredictionType;
use crate::scheduler::SchedulerConfig;
use crate::spacing::{FinalSigmas, Spacing};
use crate::unipc::{UniPcConfig, UniPcSolverType};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Deserializer};
use serde_json::Value;

/// Rewrite bare `-Infinity`, `Infinity` and `NaN` tokens (outside strings) as JSON strings.
pub fn quote_non_finite(text: &str) -> String {
    let mut out = String::with_capacity(text.len() + 16);
    let (mut in_string, mut escaped) = (false, false);
    let mut rest = text;
    while let Some(c) = rest.chars().next() {
        if in_string {
            if escaped {
                escaped = false;
            } else if c == '\\' {
                escaped = true;
            } else if c == '"' {
                in_string = false;
            }
        } else if c == '"' {
            in_string = true;
        } else if let Some(tok) = ["-Infinity", "Infinity", "NaN"]
            .into_iter()
            .find(|t| rest.starts_with(t))
        {
            out.push('"');
            out.push_str(tok);
            out.push('"');
            rest = &rest[tok.len()..];
            continue;
        }
        out.push(c);
        rest = &rest[c.len_utf8()..];
    }
    out
}

/// A float that may be written as a number or as "-Infinity" / "Infinity" / "NaN".
fn lenient_f64<'de, D: Deserializer<'de>>(d: D) -> std::result::Result<Option<f64>, D::Error> {
    match Option::<Value>::deserialize(d)? {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Number(n)) => n
            .as_f64()
            .map(Some)
            .ok_or_else(|| serde::de::Error::custom("number out of range")),
        Some(Value::String(s)) => match s.as_str() {
            "-Infinity" => Ok(Some(f64::NEG_INFINITY)),
            "Infinity" => Ok(Some(f64::INFINITY)),
            "NaN" => Ok(Some(f64::NAN)),
            other => Err(serde::de::Error::custom(format!(
                "expected a number, got the string {other:?}"
            ))),
        },
        Some(other) => Err(serde::de::Error::custom(format!(
            "expected a number, got {other}"
        ))),
    }
}

/// Every field any supported class writes; which ones a class accepts is checked separately.
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct Raw {
    num_train_timesteps: Option<usize>,
    #[serde(deserialize_with = "lenient_f64")]
    beta_start: Option<f64>,
    #[serde(deserialize_with = "lenient_f64")]
    beta_end: Option<f64>,
    beta_schedule: Option<String>,
    trained_betas: Option<Vec<f64>>,
    clip_sample: Option<bool>,
    #[serde(deserialize_with = "lenient_f64")]
    clip_sample_range: Option<f64>,
    set_alpha_to_one: Option<bool>,
    steps_offset: Option<usize>,
    prediction_type: Option<String>,
    thresholding: Option<bool>,
    timestep_spacing: Option<String>,
    rescale_betas_zero_snr: Option<bool>,
    variance_type: Option<String>,
    solver_order: Option<usize>,
    algorithm_type: Option<String>,
    solver_type: Option<String>,
    lower_order_final: Option<bool>,
    euler_at_final: Option<bool>,
    use_karras_sigmas: Option<bool>,
    use_exponential_sigmas: Option<bool>,
    use_beta_sigmas: Option<bool>,
    use_lu_lambdas: Option<bool>,
    use_flow_sigmas: Option<bool>,
    final_sigmas_type: Option<String>,
    #[serde(deserialize_with = "lenient_f64")]
    lambda_min_clipped: Option<f64>,
    use_dynamic_shifting: Option<bool>,
    time_shift_type: Option<String>,
    interpolation_type: Option<String>,
    timestep_type: Option<String>,
    #[serde(deserialize_with = "lenient_f64")]
    sigma_min: Option<f64>,
    #[serde(deserialize_with = "lenient_f64")]
    sigma_max: Option<f64>,
    predict_x0: Option<bool>,
    disable_corrector: Option<Vec<usize>>,
    solver_p: Option<Value>,
    shift_terminal: Option<Value>,
}

const COMMON: &[&str] = &[
    "_class_name",
    "_diffusers_version",
    "_use_default_values",
    "_name_or_path",
    "num_train_timesteps",
    "beta_start",
    "beta_end",
    "beta_schedule",
    "trained_betas",
    "prediction_type",
];
const THRESHOLD: &[&str] = &[
    "thresholding",
    "dynamic_thresholding_ratio",
    "sample_max_value",
];

fn allowed(class: &str) -> Option<Vec<&'static str>> {
    let extra: &[&[&str]] = match class {
        "DDIMScheduler" => &[
            THRESHOLD,
            &[
                "clip_sample",
                "clip_sample_range",
                "set_alpha_to_one",
                "steps_offset",
                "timestep_spacing",
                "rescale_betas_zero_snr",
            ],
        ],
        "DDPMScheduler" => &[
            THRESHOLD,
            &[
                "variance_type",
                "clip_sample",
                "clip_sample_range",
                "timestep_spacing",
                "steps_offset",
                "rescale_betas_zero_snr",
            ],
        ],
        "DPMSolverMultistepScheduler" => &[
            THRESHOLD,
            &[
                "solver_order",
                "algorithm_type",
                "solver_type",
                "lower_order_final",
                "euler_at_final",
                "use_karras_sigmas",
                "use_exponential_sigmas",
                "use_beta_sigmas",
                "use_lu_lambdas",
                "use_flow_sigmas",
                "flow_shift",
                "final_sigmas_type",
                "lambda_min_clipped",
                "variance_type",
                "timestep_spacing",
                "steps_offset",
                "rescale_betas_zero_snr",
                "use_dynamic_shifting",
                "time_shift_type",
            ],
        ],
        "DPMSolverSinglestepScheduler" => &[
            THRESHOLD,
            &[
                "solver_order",
                "algorithm_type",
                "solver_type",
                "lower_order_final",
                "use_karras_sigmas",
                "use_exponential_sigmas",
                "use_beta_sigmas",
                "use_flow_sigmas",
                "flow_shift",
                "final_sigmas_type",
                "lambda_min_clipped",
                "variance_type",
                "use_dynamic_shifting",
                "time_shift_type",
            ],
        ],
        "EulerDiscreteScheduler" => &[&[
            "interpolation_type",
            "use_karras_sigmas",
            "use_exponential_sigmas",
            "use_beta_sigmas",
            "sigma_min",
            "sigma_max",
            "timestep_spacing",
            "timestep_type",
            "steps_offset",
            "rescale_betas_zero_snr",
            "final_sigmas_type",
        ]],
        "EulerAncestralDiscreteScheduler" => {
            &[&["timestep_spacing", "steps_offset", "rescale_betas_zero_snr"]]
        }
        "UniPCMultistepScheduler" => &[
            THRESHOLD,
            &[
                "solver_order",
                "solver_type",
                "lower_order_final",
                "disable_corrector",
                "solver_p",
                "use_karras_sigmas",
                "use_exponential_sigmas",
                "use_beta_sigmas",
                "use_flow_sigmas",
                "flow_shift",
                "timestep_spacing",
                "steps_offset",
                "final_sigmas_type",
                "rescale_betas_zero_snr",
                "use_dynamic_shifting",
                "time_shift_type",
                "sigma_min",
                "sigma_max",
                "shift_terminal",
                "predict_x0",
            ],
        ],
        _ => return None,
    };
    Some(
        COMMON
            .iter()
            .chain(extra.iter().flat_map(|l| l.iter()))
            .copied()
            .collect(),
    )
}

/// Parse a string-valued option into `T` through serde, with a message listing the choices.
fn choice<T: DeserializeOwned>(field: &str, value: &str, choices: &str) -> Result<T, String> {
    serde_json::from_value(Value::String(value.to_owned()))
        .map_err(|_| format!("unsupported {field} {value:?} (supported: {choices})"))
}

struct Reader<'a> {
    class: &'a str,
    raw: Raw,
}

impl Reader<'_> {
    fn flag_off(&self, field: &str, value: Option<bool>) -> Result<(), String> {
        if value == Some(true) {
            return Err(format!(
                "{field} = true is not supported for {}",
                self.class
            ));
        }
        Ok(())
    }

    fn betas(&self) -> Result<BetaConfig, String> {
        let r = &self.raw;
        let start = r.beta_start.unwrap_or(1e-4);
        let end = r.beta_end.unwrap_or(0.02);
        let schedule = match (&r.trained_betas, r.beta_schedule.as_deref().unwrap_or("linear")) {
            (Some(b), _) => BetaSchedule::Trained(b.clone()),
            (None, "linear") => BetaSchedule::Linear { start, end },
            (None, "scaled_linear") => BetaSchedule::ScaledLinear { start, end },
            (None, "squaredcos_cap_v2") => BetaSchedule::SquaredCosCapV2,
            (None, other) => {
                return Err(format!(
                    "unsupported beta_schedule {other:?} (supported: linear, scaled_linear, squaredcos_cap_v2)"
                ))
            }
        };
        self.flag_off("thresholding", r.thresholding)?;
        Ok(BetaConfig {
            schedule,
            num_train_timesteps: r.num_train_timesteps.unwrap_or(1000),
            rescale_betas_zero_snr: r.rescale_betas_zero_snr.unwrap_or(false),
        })
    }

    fn prediction(&self) -> Result<PredictionType, String> {
        choice(
            "prediction_type",
            self.raw.prediction_type.as_deref().unwrap_or("epsilon"),
            "epsilon, v_prediction, sample",
        )
    }

    fn spacing(&self, default: &str) -> Result<Spacing, String> {
        choice(
            "timestep_spacing",
            self.raw.timestep_spacing.as_deref().unwrap_or(default),
            "leading, trailing, linspace",
        )
    }

    fn clip(&self, default: bool) -> Option<f64> {
        self.raw
            .clip_sample
            .unwrap_or(default)
            .then_some(self.raw.clip_sample_range.unwrap_or(1.0))
    }

    fn final_sigmas(&self) -> Result<FinalSigmas, String> {
        choice(
            "final_sigmas_type",
            self.raw.final_sigmas_type.as_deref().unwrap_or("zero"),
            "zero, sigma_min",
        )
    }

    /// Sigma families other than Karras, flow matching and dynamic shifting are not implemented.
    fn karras_only(&self) -> Result<bool, String> {
        let r = &self.raw;
        self.flag_off("use_exponential_sigmas", r.use_exponential_sigmas)?;
        self.flag_off("use_beta_sigmas", r.use_beta_sigmas)?;
        self.flag_off("use_lu_lambdas", r.use_lu_lambdas)?;
        self.flag_off("use_flow_sigmas", r.use_flow_sigmas)?;
        self.flag_off("use_dynamic_shifting", r.use_dynamic_shifting)?;
        if let Some(t) = r
            .time_shift_type
            .as_deref()
            .filter(|t| *t != "exponential" && *t != "linear")
        {
            return Err(format!("unsupported time_shift_type {t:?}"));
        }
        if let Some(v) = r.variance_type.as_deref() {
            return Err(format!(
                "variance_type {v:?} (a learned variance) is not supported for {}",
                self.class
            ));
        }
        Ok(r.use_karras_sigmas.unwrap_or(false))
    }

    fn order(&self) -> Result<usize, String> {
        match self.raw.solver_order.unwrap_or(2) {
            o @ 1..=3 => Ok(o),
            o => Err(format!("unsupported solver_order {o} (supported: 1, 2, 3)")),
        }
    }

    fn dpm_kind(
        &self,
        final_sigmas: FinalSigmas,
    ) -> Result<(AlgorithmType, DpmSolverType), String> {
        let algorithm: AlgorithmType = choice(
            "algorithm_type",
            self.raw.algorithm_type.as_deref().unwrap_or("dpmsolver++"),
            "dpmsolver++, dpmsolver, sde-dpmsolver++",
        )?;
        check_final_sigmas(algorithm, final_sigmas)?;
        let solver_type = choice(
            "solver_type",
            self.raw.solver_type.as_deref().unwrap_or("midpoint"),
            "midpoint, heun",
        )?;
        Ok((algorithm, solver_type))
    }

    fn build(&self) -> Result<SchedulerConfig, String> {
        let r = &self.raw;
        Ok(match self.class {
            "DDIMScheduler" => SchedulerConfig::Ddim(DdimConfig {
                betas: self.betas()?,
                prediction_type: self.prediction()?,
                clip_sample: self.clip(true),
                set_alpha_to_one: r.set_alpha_to_one.unwrap_or(true),
                steps_offset: r.steps_offset.unwrap_or(0),
                timestep_spacing: self.spacing("leading")?,
                eta: 0.0,
            }),
            "DDPMScheduler" => SchedulerConfig::Ddpm(DdpmConfig {
                betas: self.betas()?,
                prediction_type: self.prediction()?,
                variance_type: choice(
                    "variance_type",
                    r.variance_type.as_deref().unwrap_or("fixed_small"),
                    "fixed_small, fixed_small_log, fixed_large",
                )?,
                clip_sample: self.clip(true),
                steps_offset: r.steps_offset.unwrap_or(0),
                timestep_spacing: self.spacing("leading")?,
            }),
            "DPMSolverMultistepScheduler" => {
                let final_sigmas_type = self.final_sigmas()?;
                let (algorithm_type, solver_type) = self.dpm_kind(final_sigmas_type)?;
                SchedulerConfig::DpmMultistep(DpmMultistepConfig {
                    betas: self.betas()?,
                    solver_order: self.order()?,
                    prediction_type: self.prediction()?,
                    algorithm_type,
                    solver_type,
                    lower_order_final: r.lower_order_final.unwrap_or(true),
                    euler_at_final: r.euler_at_final.unwrap_or(false),
                    use_karras_sigmas: self.karras_only()?,
                    final_sigmas_type,
                    lambda_min_clipped: r.lambda_min_clipped.unwrap_or(f64::NEG_INFINITY),
                    timestep_spacing: self.spacing("linspace")?,
                    steps_offset: r.steps_offset.unwrap_or(0),
                })
            }
            "DPMSolverSinglestepScheduler" => {
                let final_sigmas_type = self.final_sigmas()?;
                let (algorithm_type, solver_type) = self.dpm_kind(final_sigmas_type)?;
                if algorithm_type == AlgorithmType::SdeDpmSolverPp {
                    return Err("algorithm_type \"sde-dpmsolver++\" is not supported for DPMSolverSinglestepScheduler".into());
                }
                SchedulerConfig::DpmSinglestep(DpmSinglestepConfig {
                    betas: self.betas()?,
                    solver_order: self.order()?,
                    prediction_type: self.prediction()?,
                    algorithm_type,
                    solver_type,
                    lower_order_final: r.lower_order_final.unwrap_or(false),
                    use_karras_sigmas: self.karras_only()?,
                    final_sigmas_type,
                    lambda_min_clipped: r.lambda_min_clipped.unwrap_or(f64::NEG_INFINITY),
                })
            }
            "EulerDiscreteScheduler" => {
                if let Some(t) = r.interpolation_type.as_deref().filter(|t| *t != "linear") {
                    return Err(format!(
                        "unsupported interpolation_type {t:?} (supported: linear)"
                    ));
                }
                if let Some(t) = r.timestep_type.as_deref().filter(|t| *t != "discrete") {
                    return Err(format!(
                        "unsupported timestep_type {t:?} (supported: discrete)"
                    ));
                }
                SchedulerConfig::Euler(EulerConfig {
                    betas: self.betas()?,
                    prediction_type: self.prediction()?,
                    use_karras_sigmas: self.karras_only()?,
                    sigma_min: r.sigma_min,
                    sigma_max: r.sigma_max,
                    timestep_spacing: self.spacing("linspace")?,
                    steps_offset: r.steps_offset.unwrap_or(0),
                    final_sigmas_type: self.final_sigmas()?,
                })
            }
            "EulerAncestralDiscreteScheduler" => {
                let prediction_type = self.prediction()?;
                if prediction_type == PredictionType::Sample {
                    return Err("prediction_type \"sample\" is not implemented by EulerAncestralDiscreteScheduler".into());
                }
                SchedulerConfig::EulerAncestral(EulerAncestralConfig {
                    betas: self.betas()?,
                    prediction_type,
                    timestep_spacing: self.spacing("linspace")?,
                    steps_offset: r.steps_offset.unwrap_or(0),
                })
            }
            "UniPCMultistepScheduler" => {
                if r.solver_p.as_ref().is_some_and(|v| !v.is_null()) {
                    return Err(
                        "solver_p (an external predictor scheduler) is not supported".into(),
                    );
                }
                if r.shift_terminal.as_ref().is_some_and(|v| !v.is_null()) {
                    return Err(
                        "shift_terminal is only used with flow sigmas, which are not supported"
                            .into(),
                    );
                }
                SchedulerConfig::UniPc(UniPcConfig {
                    betas: self.betas()?,
                    solver_order: self.order()?,
                    prediction_type: self.prediction()?,
                    solver_type: choice::<UniPcSolverType>(
                        "solver_type",
                        r.solver_type.as_deref().unwrap_or("bh2"),
                        "bh1, bh2",
                    )?,
                    predict_x0: r.predict_x0.unwrap_or(true),
                    lower_order_final: r.lower_order_final.unwrap_or(true),
                    disable_corrector: r.disable_corrector.clone().unwrap_or_default(),
                    use_karras_sigmas: self.karras_only()?,
                    sigma_min: r.sigma_min,
                    sigma_max: r.sigma_max,
                    timestep_spacing: self.spacing("linspace")?,
                    steps_offset: r.steps_offset.unwrap_or(0),
                    final_sigmas_type: self.final_sigmas()?,
                })
            }
            other => return Err(format!("unsupported scheduler class {other:?}")),
        })
    }
}

/// Parse a diffusers scheduler config; `origin` names the file (or string) in error messages.
pub(crate) fn parse_diffusers(text: &str, origin: &str) -> Result<SchedulerConfig> {
    let err = |m: String| Error::config(origin, m);
    let value: Value = serde_json::from_str(&quote_non_finite(text))
        .map_err(|e| err(format!("invalid JSON: {e}")))?;
    let obj = value
        .as_object()
        .ok_or_else(|| err("expected a JSON object".into()))?;
    let class = obj
        .get("_class_name")
        .and_then(Value::as_str)
        .ok_or_else(|| err("missing \"_class_name\"".into()))?;
    let fields = allowed(class).ok_or_else(|| {
        err(format!(
            "unsupported scheduler class {class:?} (supported: DDIMScheduler, DDPMScheduler, DPMSolverMultistepScheduler, DPMSolverSinglestepScheduler, EulerDiscreteScheduler, EulerAncestralDiscreteScheduler, UniPCMultistepScheduler)"
        ))
    })?;
    if let Some(unknown) = obj.keys().find(|k| !fields.contains(&k.as_str())) {
        return Err(err(format!("unknown field {unknown:?} for {class}")));
    }
    let raw: Raw =
        serde_json::from_value(value.clone()).map_err(|e| err(format!("{class}: {e}")))?;
    Reader { class, raw }
        .build()
        .map_err(|m| err(format!("{class}: {m}")))
}
