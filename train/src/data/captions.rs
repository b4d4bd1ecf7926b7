//! Captions generated from labels: the 10 Fashion-MNIST classes (concepts 0–9) and the 10 digits
//! (concepts 10–19), each with several phrasings and templates, so a text encoder trained on them
//! accepts ordinary prompts ("an ankle boot", "trainers", "a handwritten 7").

use std::collections::{BTreeMap, BTreeSet};

use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::Rng;

/// One thing the default model can draw, with the ways a caption may name it.
#[derive(Debug, Clone, Copy)]
pub struct Concept {
    pub name: &'static str,
    /// Noun phrases with their own articles, used inside the templates.
    pub phrases: &'static [&'static str],
    /// Caption templates; `{}` is replaced by a phrase.
    pub templates: &'static [&'static str],
}

const GARMENT: &[&str] = &[
    "{}",
    "a photo of {}",
    "a picture of {}",
    "an image of {}",
    "a grayscale photo of {}",
    "a product photo of {}",
    "{} on a black background",
    "a small picture of {}",
];

const DIGIT: &[&str] = &[
    "{}",
    "a picture of {}",
    "an image of {}",
    "a drawing of {}",
    "{} written by hand",
    "a scan of {}",
];

macro_rules! digit {
    ($d:literal, $w:literal) => {
        Concept {
            name: concat!("digit ", $d),
            phrases: &[
                concat!("a handwritten ", $d),
                concat!("a handwritten ", $w),
                concat!("the digit ", $d),
                concat!("the digit ", $w),
                concat!("the number ", $w),
                concat!("the number ", $d),
                concat!("a ", $d),
                $d,
                $w,
            ],
            templates: DIGIT,
        }
    };
}

/// Concept `i` for labels: Fashion-MNIST label `l` is concept `l`, digit `d` is concept `10 + d`.
pub const CONCEPTS: [Concept; 20] = [
    Concept {
        name: "t-shirt/top",
        phrases: &[
            "a t-shirt",
            "a tee",
            "a top",
            "a tshirt",
            "a short-sleeved top",
        ],
        templates: GARMENT,
    },
    Concept {
        name: "trouser",
        phrases: &[
            "a pair of trousers",
            "trousers",
            "pants",
            "a pair of pants",
            "jeans",
        ],
        templates: GARMENT,
    },
    Concept {
        name: "pullover",
        phrases: &["a pullover", "a sweater", "a jumper", "a knitted sweater"],
        templates: GARMENT,
    },
    Concept {
        name: "dress",
        phrases: &["a dress", "a summer dress", "a long dress", "a gown"],
        templates: GARMENT,
    },
    Concept {
        name: "coat",
        phrases: &["a coat", "a jacket", "a winter coat", "an overcoat"],
        templates: GARMENT,
    },
    Concept {
        name: "sandal",
        phrases: &["a sandal", "sandals", "a pair of sandals", "a flip-flop"],
        templates: GARMENT,
    },
    Concept {
        name: "shirt",
        phrases: &[
            "a shirt",
            "a button-up shirt",
            "a blouse",
            "a long-sleeved shirt",
        ],
        templates: GARMENT,
    },
    Concept {
        name: "sneaker",
        phrases: &[
            "a sneaker",
            "sneakers",
            "trainers",
            "a trainer",
            "a running shoe",
        ],
        templates: GARMENT,
    },
    Concept {
        name: "bag",
        phrases: &["a bag", "a handbag", "a purse", "a tote bag"],
        templates: GARMENT,
    },
    Concept {
        name: "ankle boot",
        phrases: &["an ankle boot", "a boot", "boots", "a pair of ankle boots"],
        templates: GARMENT,
    },
    digit!("0", "zero"),
    digit!("1", "one"),
    digit!("2", "two"),
    digit!("3", "three"),
    digit!("4", "four"),
    digit!("5", "five"),
    digit!("6", "six"),
    digit!("7", "seven"),
    digit!("8", "eight"),
    digit!("9", "nine"),
];

impl Concept {
    /// Every caption of this concept (templates × phrases); [`Captioner::caption`] draws
    /// uniformly among them.
    pub fn captions(&self) -> impl Iterator<Item = String> + '_ {
        self.templates
            .iter()
            .flat_map(move |t| self.phrases.iter().map(move |p| t.replace("{}", p)))
    }
}

/// Captions for a data set's labels, which a text-to-image trainer reads instead of the labels
/// themselves. Given to the trainer ([`crate::trainer::Trainer::with_captions`]) rather than
/// built into it, so any labelled data set can be captioned; [`Captioner`] is the default
/// model's.
pub trait Captions {
    /// A caption for `label`, drawn with `rng` (a seeded run draws the same captions).
    fn caption(&self, label: u32, rng: &mut StdRng) -> Result<String, super::Error>;
}

/// Draws captions for concept ids.
#[derive(Debug, Clone, Copy, Default)]
pub struct Captioner;

impl Captions for Captioner {
    fn caption(&self, label: u32, rng: &mut StdRng) -> Result<String, super::Error> {
        Captioner::caption(self, label, rng)
    }
}

impl Captioner {
    /// A random caption for concept `concept` (panics never: ids ≥ 20 are an error).
    pub fn caption<R: Rng>(&self, concept: u32, rng: &mut R) -> Result<String, super::Error> {
        let c = CONCEPTS
            .get(concept as usize)
            .ok_or_else(|| super::Error::Invalid {
                msg: format!(
                    "label {concept} has no caption concept (0..{})",
                    CONCEPTS.len()
                ),
            })?;
        let template = c.templates.choose(rng).copied().unwrap_or("{}");
        let phrase = c.phrases.choose(rng).copied().unwrap_or(c.name);
        Ok(template.replace("{}", phrase))
    }

    /// Every caption the captioner can produce, in a fixed order.
    pub fn all_captions(&self) -> Vec<String> {
        CONCEPTS.iter().flat_map(Concept::captions).collect()
    }

    /// Words that name exactly one concept and appear in no template ("boot", "seven",
    /// "trainers"): a prompt must contain one to be grounded, so "a purple elephant" is refused
    /// instead of being drawn as something arbitrary.
    pub fn content_words(&self) -> Vec<String> {
        let template_words: BTreeSet<&str> = CONCEPTS
            .iter()
            .flat_map(|c| c.templates.iter().flat_map(|t| t.split_whitespace()))
            .collect();
        let mut owners: BTreeMap<&str, BTreeSet<usize>> = BTreeMap::new();
        for (k, c) in CONCEPTS.iter().enumerate() {
            for w in c.phrases.iter().flat_map(|p| p.split_whitespace()) {
                owners.entry(w).or_default().insert(k);
            }
        }
        owners
            .into_iter()
            .filter(|(w, o)| o.len() == 1 && !template_words.contains(w))
            .map(|(w, _)| w.to_string())
            .collect()
    }

    /// One plain example prompt per concept, for help texts and error messages.
    pub fn example_prompts(&self) -> Vec<&'static str> {
        CONCEPTS.iter().map(|c| c.phrases[0]).collect()
    }
}
