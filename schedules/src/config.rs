//! Reading diffusers `scheduler_config.json` files. The file is the contract: every field
//! diffusers writes for the class is accepted (including the ones without effect), unknown
//! fields, unknown classes and unsupported or contradictory settings are errors.
//!
//! diffusers writes non-finite floats as bare `-Infinity` / `Infinity` / `NaN` tokens (invalid
//! JSON); they are rewritten to strings before parsing, and float fields accept either form.

use crate::betas::{BetaConfig, BetaSchedule};
use crate::dpm_multistep::{check_final_sigmas, AlgorithmType, DpmSolverType};
use crate::error::{Error, Result};
use crate::prediction::PredictionType;
use crate::registry::diffusers_classes;
use crate::scheduler::SchedulerConfig;
use crate::spacing::{FinalSigmas, Spacing};
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
pub(crate) struct Raw {
    pub(crate) num_train_timesteps: Option<usize>,
    #[serde(deserialize_with = "lenient_f64")]
    pub(crate) beta_start: Option<f64>,
    #[serde(deserialize_with = "lenient_f64")]
    pub(crate) beta_end: Option<f64>,
    pub(crate) beta_schedule: Option<String>,
    pub(crate) trained_betas: Option<Vec<f64>>,
    pub(crate) clip_sample: Option<bool>,
    #[serde(deserialize_with = "lenient_f64")]
    pub(crate) clip_sample_range: Option<f64>,
    pub(crate) set_alpha_to_one: Option<bool>,
    pub(crate) steps_offset: Option<usize>,
    pub(crate) prediction_type: Option<String>,
    pub(crate) thresholding: Option<bool>,
    pub(crate) timestep_spacing: Option<String>,
    pub(crate) rescale_betas_zero_snr: Option<bool>,
    pub(crate) variance_type: Option<String>,
    pub(crate) solver_order: Option<usize>,
    pub(crate) algorithm_type: Option<String>,
    pub(crate) solver_type: Option<String>,
    pub(crate) lower_order_final: Option<bool>,
    pub(crate) euler_at_final: Option<bool>,
    pub(crate) use_karras_sigmas: Option<bool>,
    pub(crate) use_exponential_sigmas: Option<bool>,
    pub(crate) use_beta_sigmas: Option<bool>,
    pub(crate) use_lu_lambdas: Option<bool>,
    pub(crate) use_flow_sigmas: Option<bool>,
    pub(crate) final_sigmas_type: Option<String>,
    #[serde(deserialize_with = "lenient_f64")]
    pub(crate) lambda_min_clipped: Option<f64>,
    pub(crate) use_dynamic_shifting: Option<bool>,
    pub(crate) time_shift_type: Option<String>,
    pub(crate) interpolation_type: Option<String>,
    pub(crate) timestep_type: Option<String>,
    #[serde(deserialize_with = "lenient_f64")]
    pub(crate) sigma_min: Option<f64>,
    #[serde(deserialize_with = "lenient_f64")]
    pub(crate) sigma_max: Option<f64>,
    pub(crate) predict_x0: Option<bool>,
    pub(crate) disable_corrector: Option<Vec<usize>>,
    pub(crate) solver_p: Option<Value>,
    pub(crate) shift_terminal: Option<Value>,
}

/// Fields every class accepts.
pub(crate) const COMMON: &[&str] = &[
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
/// Dynamic thresholding (accepted when off).
pub(crate) const THRESHOLD: &[&str] = &[
    "thresholding",
    "dynamic_thresholding_ratio",
    "sample_max_value",
];

/// Parse a string-valued option into `T` through serde, with a message listing the choices.
pub(crate) fn choice<T: DeserializeOwned>(
    field: &str,
    value: &str,
    choices: &str,
) -> Result<T, String> {
    serde_json::from_value(Value::String(value.to_owned()))
        .map_err(|_| format!("unsupported {field} {value:?} (supported: {choices})"))
}

/// A parsed config of one class; the helpers read the settings most classes share.
pub(crate) struct Reader<'a> {
    pub(crate) class: &'a str,
    pub(crate) raw: Raw,
}

impl Reader<'_> {
    pub(crate) fn flag_off(&self, field: &str, value: Option<bool>) -> Result<(), String> {
        if value == Some(true) {
            return Err(format!(
                "{field} = true is not supported for {}",
                self.class
            ));
        }
        Ok(())
    }

    pub(crate) fn betas(&self) -> Result<BetaConfig, String> {
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

    pub(crate) fn prediction(&self) -> Result<PredictionType, String> {
        choice(
            "prediction_type",
            self.raw.prediction_type.as_deref().unwrap_or("epsilon"),
            "epsilon, v_prediction, sample",
        )
    }

    pub(crate) fn spacing(&self, default: &str) -> Result<Spacing, String> {
        choice(
            "timestep_spacing",
            self.raw.timestep_spacing.as_deref().unwrap_or(default),
            "leading, trailing, linspace",
        )
    }

    pub(crate) fn clip(&self, default: bool) -> Option<f64> {
        self.raw
            .clip_sample
            .unwrap_or(default)
            .then_some(self.raw.clip_sample_range.unwrap_or(1.0))
    }

    pub(crate) fn final_sigmas(&self) -> Result<FinalSigmas, String> {
        choice(
            "final_sigmas_type",
            self.raw.final_sigmas_type.as_deref().unwrap_or("zero"),
            "zero, sigma_min",
        )
    }

    /// Sigma families other than Karras, flow matching and dynamic shifting are not implemented.
    pub(crate) fn karras_only(&self) -> Result<bool, String> {
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

    pub(crate) fn order(&self) -> Result<usize, String> {
        match self.raw.solver_order.unwrap_or(2) {
            o @ 1..=3 => Ok(o),
            o => Err(format!("unsupported solver_order {o} (supported: 1, 2, 3)")),
        }
    }

    pub(crate) fn dpm_kind(
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
    let Some(entry) = diffusers_classes().find(|c| c.name == class) else {
        let known: Vec<&str> = diffusers_classes().map(|c| c.name).collect();
        return Err(err(format!(
            "unsupported scheduler class {class:?} (supported: {})",
            known.join(", ")
        )));
    };
    let fields = COMMON.iter().chain(entry.fields.iter().copied().flatten());
    if let Some(unknown) = obj.keys().find(|k| !fields.clone().any(|f| f == k)) {
        return Err(err(format!("unknown field {unknown:?} for {class}")));
    }
    let raw: Raw =
        serde_json::from_value(value.clone()).map_err(|e| err(format!("{class}: {e}")))?;
    (entry.read)(&Reader { class, raw }).map_err(|m| err(format!("{class}: {m}")))
}
