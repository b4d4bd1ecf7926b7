#!/usr/bin/env python3
"""Tiny random-weight fixtures for the latent-pipeline components, with reference outputs from the
PyTorch implementations (diffusers' AutoencoderKL, transformers' CLIPTextModel and BertModel).

Writes unet/tests/fixtures/latent/:
  vae/config.json, vae/diffusion_pytorch_model.safetensors  diffusers layout, decoder +
                                                            post_quant_conv only
  autoencoder_kl.pth      the same weights under the original LDM names (U-ViT's
                          `autoencoder_kl.pth` layout, encoder stub included), checked against
                          diffusers' own LDM->diffusers converter
  autoencoder_kl.config.json  its norm_num_groups (not visible in shapes)
  vae_io.safetensors      z [B,4,h,w] and image = vae.decode(z / scale_factor)
  clip/{config.json, model.safetensors, tokenizer.json}     CLIPTextModel (quick_gelu)
  clip_io.safetensors     ids, attention mask (not fed: U-ViT feeds none) and last_hidden_state
                          of PROMPTS, padded/truncated to 77 tokens; ids_5 truncated to 5
  bert/{config.json, model.safetensors, tokenizer.json}     BertModel (sentence-transformers
                                                            layout, no `bert.` prefix)
  bert_io.safetensors     ids, attention mask and last_hidden_state at 16 tokens
  prompts.json            the prompts, in order ("" is the null prompt)

Needs torch, diffusers, transformers, safetensors (CPU is enough). Run from the repository root:
    python3 scripts/make_latent_fixtures.py
"""
import json
import os
import tempfile

import torch
from diffusers import AutoencoderKL
from diffusers.loaders.single_file_utils import convert_ldm_vae_checkpoint
from safetensors.torch import save_file
from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, processors
from transformers import BertConfig, BertModel, CLIPTextConfig, CLIPTextModel

OUT = "unet/tests/fixtures/latent"
SCALE = 0.18215
PROMPTS = [
    "a photo of a cat",
    "",
    "a red dog on the grass next to a small blue house under a big white cloud and the sun " * 4,
]
WORDS = sorted(set(" ".join(PROMPTS).split()))


def perturb(model, std=0.1):
    """Random norms and biases (default init makes them 1/0 and would hide swapped names)."""
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() == 1:
                p.add_(torch.randn_like(p) * std)


def diffusers_to_ldm(sd, n_blocks):
    """Decoder + post_quant_conv of a diffusers state dict under the original LDM names."""
    out = {}
    for k, v in sd.items():
        if not (k.startswith("decoder.") or k.startswith("post_quant_conv.")):
            continue
        n = k.replace("decoder.conv_norm_out", "decoder.norm_out")
        n = n.replace("mid_block.resnets.0", "mid.block_1").replace("mid_block.resnets.1", "mid.block_2")
        n = n.replace("conv_shortcut", "nin_shortcut")
        if "mid_block.attentions.0" in n:
            n = n.replace("mid_block.attentions.0", "mid.attn_1").replace("group_norm", "norm")
            n = n.replace("to_q", "q").replace("to_k", "k").replace("to_v", "v").replace("to_out.0", "proj_out")
            if v.dim() == 2:
                v = v[:, :, None, None]
        if n.startswith("decoder.up_blocks."):
            rest = n[len("decoder.up_blocks."):]
            i, rest = rest.split(".", 1)
            rest = rest.replace("resnets.", "block.").replace("upsamplers.0.", "upsample.")
            n = f"decoder.up.{n_blocks - 1 - int(i)}.{rest}"
        out[n] = v.clone().contiguous()
    return out


def vae():
    cfg = dict(
        in_channels=3,
        out_channels=3,
        down_block_types=["DownEncoderBlock2D"] * 4,
        up_block_types=["UpDecoderBlock2D"] * 4,
        block_out_channels=[8, 8, 16, 16],
        layers_per_block=1,
        latent_channels=4,
        norm_num_groups=4,
        sample_size=32,
        scaling_factor=SCALE,
    )
    model = AutoencoderKL(**cfg).eval()
    perturb(model)
    sd = model.state_dict()
    os.makedirs(f"{OUT}/vae", exist_ok=True)
    model.save_config(f"{OUT}/vae")
    keep = {k: v.contiguous() for k, v in sd.items() if k.startswith(("decoder.", "post_quant_conv."))}
    save_file(keep, f"{OUT}/vae/diffusion_pytorch_model.safetensors")

    ldm = diffusers_to_ldm(sd, len(cfg["block_out_channels"]))
    # diffusers' own LDM->diffusers converter (it needs the encoder too) must map our names back.
    back = convert_ldm_vae_checkpoint(with_ldm_encoder(sd, ldm), model.config)
    for k, v in keep.items():
        assert torch.equal(back[k].reshape(v.shape), v), k
    # U-ViT's file also holds the encoder; a stub of it shows such keys are ignored.
    ldm["encoder.conv_in.weight"] = sd["encoder.conv_in.weight"].clone()
    ldm["quant_conv.weight"] = sd["quant_conv.weight"].clone()
    torch.save(ldm, f"{OUT}/autoencoder_kl.pth")
    # What the shapes cannot tell (Stable Diffusion's own file needs none: 32 groups, 0.18215).
    with open(f"{OUT}/autoencoder_kl.config.json", "w") as f:
        json.dump({"norm_num_groups": cfg["norm_num_groups"], "scaling_factor": SCALE}, f)

    g = torch.Generator().manual_seed(7)
    z = torch.randn(2, 4, 4, 4, generator=g)
    with torch.no_grad():
        image = model.decode(z / SCALE).sample
    save_file({"z": z, "image": image.contiguous()}, f"{OUT}/vae_io.safetensors")
    print("vae: decoder params", sum(v.numel() for v in keep.values()), "image", tuple(image.shape))


def with_ldm_encoder(sd, ldm):
    """`ldm` plus the encoder and quant_conv of `sd` under LDM names, as the converter wants."""
    out = dict(ldm)
    out.update({k: v for k, v in sd.items() if k.startswith("quant_conv.")})
    for k, v in sd.items():
        if not k.startswith("encoder."):
            continue
        n = k.replace("conv_norm_out", "norm_out").replace("conv_shortcut", "nin_shortcut")
        n = n.replace("mid_block.resnets.0", "mid.block_1").replace("mid_block.resnets.1", "mid.block_2")
        if "mid_block.attentions.0" in n:
            n = n.replace("mid_block.attentions.0", "mid.attn_1").replace("group_norm", "norm")
            n = n.replace("to_q", "q").replace("to_k", "k").replace("to_v", "v").replace("to_out.0", "proj_out")
            if v.dim() == 2:
                v = v[:, :, None, None]
        n = n.replace("down_blocks.", "down.").replace("resnets.", "block.").replace("downsamplers.0.", "downsample.")
        out[n] = v
    return out


def clip_tokenizer():
    """A byte-level BPE tokenizer.json laid out like openai/clip-vit-large-patch14's, over the
    fixture's words."""
    byte_chars = sorted(pre_tokenizers.ByteLevel.alphabet())
    vocab = byte_chars + [c + "</w>" for c in byte_chars]
    merges = []
    for w in WORDS:
        cur = list(w[:-1]) + [w[-1] + "</w>"]
        while len(cur) > 1:
            a, b = cur[0], cur[1]
            merges.append((a, b))
            if a + b not in vocab:
                vocab.append(a + b)
            cur = [a + b] + cur[2:]
    merges = list(dict.fromkeys(merges))
    vocab += ["<|startoftext|>", "<|endoftext|>"]
    ids = {t: i for i, t in enumerate(vocab)}
    tok = Tokenizer(models.BPE(vocab=ids, merges=merges, unk_token="<|endoftext|>", end_of_word_suffix="</w>"))
    tok.normalizer = normalizers.Sequence(
        [normalizers.NFC(), normalizers.Replace(Regex(r"\s+"), " "), normalizers.Lowercase()]
    )
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(
                Regex(r"""'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+"""), "removed", invert=True
            ),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.RobertaProcessing(
        ("<|endoftext|>", ids["<|endoftext|>"]),
        ("<|startoftext|>", ids["<|startoftext|>"]),
        add_prefix_space=False,
        trim_offsets=False,
    )
    return tok, len(vocab)


def save_text_model(model, tok, name):
    """Perturbs `model` and saves it with its tokenizer as a Hugging Face folder `name`."""
    model.eval()
    perturb(model)
    model.save_pretrained(f"{OUT}/{name}")
    tok.save(f"{OUT}/{name}/tokenizer.json")
    return model


def save_text_io(model, tok, name, length, pad_id, use_mask, **extra):
    """Ids, attention mask and last hidden state of PROMPTS at `length` tokens -> NAME_io."""
    ids, mask = padded_ids(tok, PROMPTS, length, pad_id)
    with torch.no_grad():
        hidden = model(input_ids=ids, attention_mask=mask if use_mask else None).last_hidden_state
    tensors = {"ids": ids, "attention_mask": mask, "last_hidden_state": hidden.contiguous(), **extra}
    save_file(tensors, f"{OUT}/{name}_io.safetensors")
    print(name, "hidden", tuple(hidden.shape), "ids[0]", ids[0, :8].tolist())


def padded_ids(tok, prompts, length, pad_id):
    tok = Tokenizer.from_str(tok.to_str())
    tok.enable_truncation(length)
    tok.enable_padding(length=length, pad_id=pad_id)
    enc = tok.encode_batch(prompts)
    return (
        torch.tensor([e.ids for e in enc], dtype=torch.int64),
        torch.tensor([e.attention_mask for e in enc], dtype=torch.int64),
    )


def clip():
    tok, vocab_size = clip_tokenizer()
    cfg = CLIPTextConfig(
        vocab_size=vocab_size,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        max_position_embeddings=77,
        hidden_act="quick_gelu",
        projection_dim=32,
        bos_token_id=vocab_size - 2,
        eos_token_id=vocab_size - 1,
        pad_token_id=vocab_size - 1,
    )
    torch.manual_seed(1)
    model = save_text_model(CLIPTextModel(cfg), tok, "clip")
    eos = vocab_size - 1  # openai/clip-vit-large-patch14 pads with <|endoftext|>, as U-ViT does
    ids, _ = padded_ids(tok, PROMPTS, 5, eos)
    # No attention mask: U-ViT's FrozenCLIPEmbedder feeds the padded ids alone.
    save_text_io(model, tok, "clip", 77, eos, use_mask=False, ids_5=ids)


def bert():
    specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    vocab = specials + WORDS[:-3] + ["##s", "##e"]  # a few words left out: they become [UNK]
    ids = {t: i for i, t in enumerate(vocab)}
    tok = Tokenizer(models.WordPiece(vocab=ids, unk_token="[UNK]"))
    tok.normalizer = normalizers.BertNormalizer(lowercase=True)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.decoder = decoders.WordPiece()
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", special_tokens=[("[CLS]", ids["[CLS]"]), ("[SEP]", ids["[SEP]"])]
    )
    cfg = BertConfig(
        vocab_size=len(vocab),
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=64,
        max_position_embeddings=32,
        hidden_act="gelu",
    )
    torch.manual_seed(2)
    model = save_text_model(BertModel(cfg, add_pooling_layer=False), tok, "bert")
    save_text_io(model, tok, "bert", 16, ids["[PAD]"], use_mask=True)


if __name__ == "__main__":
    torch.manual_seed(0)
    os.makedirs(OUT, exist_ok=True)
    with open(f"{OUT}/prompts.json", "w") as f:
        json.dump(PROMPTS, f, indent=1)
    vae()
    clip()
    bert()
