//! Finding the published weights of the latent pipeline's helper networks (autoencoder, text
//! encoder): an explicit path first, then a Hugging Face cache folder. Nothing is downloaded: a
//! missing file is one error that names the files needed and where they are published.

use std::path::{Path, PathBuf};

use crate::{Error, Result};

/// A model as published on the Hugging Face hub: the repository and the files a folder of it
/// must hold.
#[derive(Debug, Clone, Copy)]
pub struct Published {
    /// What it is, for messages.
    pub what: &'static str,
    /// `org/name` on the hub.
    pub repo: &'static str,
    pub files: &'static [&'static str],
    /// Other accepted sources, for messages.
    pub alternatives: &'static str,
}

/// The Stable Diffusion KL-f8 autoencoder (fine-tuned decoder, as U-ViT's latent models use).
pub const SD_VAE: Published = Published {
    what: "the Stable Diffusion KL-f8 autoencoder (--vae)",
    repo: "stabilityai/sd-vae-ft-mse",
    files: &["config.json", "diffusion_pytorch_model.safetensors"],
    alternatives: "or U-ViT's assets/stable-diffusion/autoencoder_kl.pth, or the vae/ folder of a Stable Diffusion 1.x repository",
};

/// CLIP ViT-L/14, the text encoder of U-ViT's MS-COCO models.
pub const CLIP_VIT_L14: Published = Published {
    what: "the CLIP ViT-L/14 text encoder (--text-encoder)",
    repo: "openai/clip-vit-large-patch14",
    files: &["config.json", "model.safetensors", "tokenizer.json"],
    alternatives:
        "or any folder with a CLIP text or BERT config.json, model.safetensors and tokenizer.json",
};

/// The hub cache folder: `$HF_HUB_CACHE`, else `$HF_HOME/hub`, else `~/.cache/huggingface/hub`.
pub fn hub_cache() -> Option<PathBuf> {
    let var = |k: &str| {
        std::env::var_os(k)
            .filter(|v| !v.is_empty())
            .map(PathBuf::from)
    };
    var("HF_HUB_CACHE")
        .or_else(|| var("HF_HOME").map(|h| h.join("hub")))
        .or_else(|| var("HOME").map(|h| h.join(".cache/huggingface/hub")))
}

/// `explicit` if given (it must exist), else the snapshot folder of `published` in the hub cache
/// that holds all its files (the `refs/main` revision first), else [`Error::WeightsNotFound`].
pub fn resolve(explicit: Option<&Path>, published: &Published) -> Result<PathBuf> {
    if let Some(path) = explicit {
        if !path.exists() {
            return Err(Error::pretrained(path, "no such file or folder"));
        }
        return Ok(path.to_path_buf());
    }
    let cache = hub_cache();
    if let Some(found) = cache.as_deref().and_then(|c| cached_snapshot(c, published)) {
        return Ok(found);
    }
    Err(Error::WeightsNotFound(format!(
        "{} is needed: pass a path, or put {} of https://huggingface.co/{} in the Hugging Face cache ({}); {}",
        published.what,
        published.files.join(", "),
        published.repo,
        cache.map_or("no cache folder".into(), |c| {
            c.join(format!("models--{}", published.repo.replace('/', "--")))
                .join("snapshots/<revision>")
                .display()
                .to_string()
        }),
        published.alternatives
    )))
}

/// The snapshot of `published` under `cache` that holds all its files.
fn cached_snapshot(cache: &Path, published: &Published) -> Option<PathBuf> {
    let repo = cache.join(format!("models--{}", published.repo.replace('/', "--")));
    let main = std::fs::read_to_string(repo.join("refs/main")).ok();
    let mut snapshots: Vec<PathBuf> = std::fs::read_dir(repo.join("snapshots"))
        .ok()?
        .filter_map(|e| Some(e.ok()?.path()))
        .collect();
    // The `refs/main` revision first, then the rest in a stable order.
    snapshots.sort_by_key(|p| {
        let is_main = main.as_deref().map(str::trim) == p.file_name().and_then(|n| n.to_str());
        (!is_main, p.clone())
    });
    snapshots
        .into_iter()
        .find(|s| published.files.iter().all(|f| s.join(f).is_file()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_the_complete_snapshot_and_names_the_files_otherwise() {
        let cache = std::env::temp_dir().join(format!("deediff-hub-{}", std::process::id()));
        let repo = cache.join("models--stabilityai--sd-vae-ft-mse");
        let (partial, full) = (repo.join("snapshots/aaa"), repo.join("snapshots/bbb"));
        std::fs::create_dir_all(&partial).unwrap();
        std::fs::create_dir_all(&full).unwrap();
        std::fs::write(partial.join("config.json"), "{}").unwrap();
        for f in SD_VAE.files {
            std::fs::write(full.join(f), "").unwrap();
        }
        assert_eq!(cached_snapshot(&cache, &SD_VAE), Some(full));
        assert_eq!(cached_snapshot(&cache, &CLIP_VIT_L14), None);
        std::fs::remove_dir_all(&cache).unwrap();

        let err = resolve(Some(Path::new("/no/such/vae.pth")), &SD_VAE).unwrap_err();
        assert_eq!(err.to_string(), "/no/such/vae.pth: no such file or folder");
    }
}
