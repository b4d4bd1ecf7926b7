//! ImageNet-1k class names, so class-conditional ImageNet models take `--class "golden retriever"`.
//!
//! `imagenet_classes.txt` holds, line k, the WordNet lemmas of class k (the 1000 ILSVRC-2012
//! synsets in index order). It was built from timm's `imagenet_synsets.txt` and
//! `imagenet_synset_to_lemma.txt` (timm, Apache-2.0; the lemmas are WordNet's).

use crate::error::{Error, Result};

const NAMES: &str = include_str!("imagenet_classes.txt");

/// The synonyms of class `k` as one comma-separated line, e.g. `"golden retriever"`.
pub fn imagenet_class_name(k: usize) -> Option<&'static str> {
    NAMES.lines().nth(k)
}

/// The index of the ImageNet class called `name` (any of its synonyms, case-insensitive). A name
/// of several classes (`crane`: the bird and the machine) is an error listing them.
pub fn imagenet_class(name: &str) -> Result<u32> {
    let want = name.trim().to_lowercase();
    let is = |line: &str| line.split(',').any(|n| n.trim().to_lowercase() == want);
    let hits: Vec<(usize, &str)> = NAMES.lines().enumerate().filter(|(_, l)| is(l)).collect();
    match hits.as_slice() {
        [(k, _)] => Ok(*k as u32),
        [] => {
            let near: Vec<String> = NAMES
                .lines()
                .enumerate()
                .filter(|(_, l)| l.to_lowercase().contains(&want))
                .take(5)
                .map(|(k, l)| format!("{k} ({l})"))
                .collect();
            Err(Error::Condition(if near.is_empty() {
                format!("no ImageNet class is called {name:?}: pass a class name or index")
            } else {
                format!(
                    "no ImageNet class is called {name:?}; did you mean {}?",
                    near.join(", ")
                )
            }))
        }
        many => Err(Error::Condition(format!(
            "{name:?} names several ImageNet classes: {}; pass the index",
            many.iter()
                .map(|(k, l)| format!("{k} ({l})"))
                .collect::<Vec<_>>()
                .join(", ")
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_resolve_to_the_ilsvrc_indices() {
        assert_eq!(NAMES.lines().count(), 1000);
        assert_eq!(imagenet_class("golden retriever").unwrap(), 207);
        assert_eq!(imagenet_class("Tinca tinca").unwrap(), 0);
        assert_eq!(imagenet_class("toilet paper").unwrap(), 999);
        assert_eq!(imagenet_class_name(1), Some("goldfish, Carassius auratus"));
        let e = imagenet_class("crane").unwrap_err().to_string();
        assert!(e.contains("134") && e.contains("517"), "{e}");
        let e = imagenet_class("retriever").unwrap_err().to_string();
        assert!(e.contains("207 (golden retriever)"), "{e}");
    }
}
