"""Catalogue-constrained beam search: a seq2seq model's ranked list of real articles.

Every article is a token sequence (its text, or its semantic ID), ending with ``</s>``. A prefix
trie over those sequences says, for any decoded prefix, which tokens continue it into some
article; beam search that only follows the trie finishes on articles only, and the score of a
finished beam is the sequence log-likelihood ``log p(article | history)``: the model's own
ranking of the catalogue, with no text-to-article matching afterwards.

The trie is stored flat (CSR: per node, a slice of sorted child tokens and child nodes), so one
decoding step expands every live beam of every request with a few numpy operations. Articles
that share a sequence (two colours written the same way) share a leaf and come out together, in
catalogue order. A request stops as soon as it holds ``beams`` finished articles that no live
beam can overtake (log-likelihoods only fall as a sequence grows).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch


class ItemTrie:
    """Prefix trie over the articles' token sequences (each ending with the end token)."""

    def __init__(self, sequences: Sequence[Sequence[int]], items: Sequence[int] | None = None):
        items = range(len(sequences)) if items is None else items
        children: list[dict[int, int]] = [{}]
        leaf_items: dict[int, list[int]] = {}
        for seq, item in zip(sequences, items, strict=True):
            if len(seq) == 0:
                raise ValueError(f"article {item}: empty token sequence")
            node = 0
            for tok in seq:
                nxt = children[node].get(int(tok))
                if nxt is None:
                    nxt = len(children)
                    children.append({})
                    children[node][int(tok)] = nxt
                node = nxt
            leaf_items.setdefault(node, []).append(int(item))
        counts = np.array([len(c) for c in children], np.int64)
        self.ptr = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
        self.tokens = np.zeros(int(self.ptr[-1]), np.int64)
        self.children = np.zeros(int(self.ptr[-1]), np.int64)
        for node, kids in enumerate(children):
            if kids:
                keys = sorted(kids)
                self.tokens[self.ptr[node] : self.ptr[node + 1]] = keys
                self.children[self.ptr[node] : self.ptr[node + 1]] = [kids[k] for k in keys]
        for node in leaf_items:
            if counts[node]:
                raise ValueError(
                    "a sequence is a prefix of another: every sequence must end with the end token"
                )
        self.is_leaf = counts == 0
        self.leaf_items = {node: sorted(v) for node, v in leaf_items.items()}
        self.depth = max((len(s) for s in sequences), default=0)

    @property
    def n_nodes(self) -> int:
        return len(self.is_leaf)

    @property
    def n_items(self) -> int:
        return sum(len(v) for v in self.leaf_items.values())

    def expand(self, nodes: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """For each allowed continuation of ``nodes``: (position in ``nodes``, token, child node)."""
        lo, hi = self.ptr[nodes], self.ptr[nodes + 1]
        count = hi - lo
        rows = np.repeat(np.arange(len(nodes)), count)
        offset = np.arange(int(count.sum())) - np.repeat(np.cumsum(count) - count, count)
        flat = np.repeat(lo, count) + offset
        return rows, self.tokens[flat], self.children[flat]

    def walk(self, sequence: Sequence[int]) -> int | None:
        """The node a token sequence leads to, or None when it leaves the trie."""
        node = 0
        for tok in sequence:
            lo, hi = self.ptr[node], self.ptr[node + 1]
            j = lo + np.searchsorted(self.tokens[lo:hi], tok)
            if j >= hi or self.tokens[j] != tok:
                return None
            node = int(self.children[j])
        return node

    def items_of(self, sequence: Sequence[int]) -> list[int]:
        node = self.walk(sequence)
        return self.leaf_items.get(node, []) if node is not None else []


@dataclass
class Ranked:
    """One request's finished articles, best first: catalogue indices and log-likelihoods."""

    items: np.ndarray
    scores: np.ndarray


def _top_per_group(groups: np.ndarray, scores: np.ndarray, n: int) -> np.ndarray:
    """Indices of the ``n`` best scores within each group (ties: lower index first)."""
    order = np.lexsort((np.arange(len(scores)), -scores, groups))
    g = groups[order]
    first = np.flatnonzero(np.r_[True, g[1:] != g[:-1]])
    rank = np.arange(len(order)) - np.repeat(first, np.diff(np.r_[first, len(order)]))
    return order[rank < n]


@torch.no_grad()
def constrained_beam_search(
    model,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    trie: ItemTrie,
    beams: int,
    start_token: int | None = None,
) -> list[Ranked]:
    """The ``beams`` most likely articles per source under ``model`` (a Hugging Face encoder-decoder),
    each a distinct trie leaf, ranked by sequence log-likelihood.

    Every request owns ``beams`` fixed decoder rows for the whole search (a finished or empty slot
    stays as a dead row), so the cross-attention cache, the same for all of a request's rows, is
    never copied: only the small self-attention cache follows the beams."""
    device = input_ids.device
    start = model.config.decoder_start_token_id if start_token is None else start_token
    n, width = input_ids.shape[0], beams
    enc1 = model.get_encoder()(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
    enc, mask = enc1.repeat_interleave(width, dim=0), attention_mask.repeat_interleave(width, dim=0)
    slot_req = np.repeat(np.arange(n), width)  # the request of every row, fixed
    node = np.zeros(n * width, np.int64)
    score = np.full(n * width, -np.inf)
    score[::width] = 0.0  # one live beam per request at the root
    last = torch.full((n * width, 1), start, dtype=torch.long, device=device)
    fin_req: list[np.ndarray] = []
    fin_leaf: list[np.ndarray] = []
    fin_score: list[np.ndarray] = []
    kth = np.full(n, -np.inf)  # the beams-th best finished score per request
    cache = None
    # while no request has more than one live beam (the root, and a path every article shares, such as
    # the start token) the decoder runs one row per request; the caches grow to `beams` rows per
    # request when the search first branches
    compact = True
    for _ in range(trie.depth):
        alive = np.flatnonzero(np.isfinite(score))
        if len(alive) == 0:
            break
        if compact:
            out = model.model(
                encoder_outputs=(enc1,),
                attention_mask=attention_mask,
                decoder_input_ids=last[::width],
                cache=cache,
                use_cache=True,
            )
            hidden = out.last_hidden_state[:, -1, :].index_select(
                0, torch.as_tensor(alive // width, device=device)
            )
        else:
            out = model.model(
                encoder_outputs=(enc,),
                attention_mask=mask,
                decoder_input_ids=last,
                cache=cache,
                use_cache=True,
            )
            # the output layer only for live rows (a dead slot's logits are never read)
            hidden = out.last_hidden_state[:, -1, :].index_select(0, torch.as_tensor(alive, device=device))
        cache = out.cache
        # the log-softmax where the trie allows a token: the normaliser over the whole vocabulary, then
        # a gather
        logits = (model.lm_head(hidden) + model.final_logits_bias).float()
        pos, toks, kids = trie.expand(node[alive])
        rows = alive[pos]
        r, t = torch.as_tensor(pos, device=device), torch.as_tensor(toks, device=device)
        cand = score[rows] + (logits[r, t] - torch.logsumexp(logits, dim=-1)[r]).cpu().numpy().astype(
            np.float64
        )
        req = slot_req[rows]
        keep = _top_per_group(req, cand, width)
        rows, toks, kids, cand, req = rows[keep], toks[keep], kids[keep], cand[keep], req[keep]
        done = trie.is_leaf[kids]
        if done.any():
            fin_req.append(req[done])
            fin_leaf.append(kids[done])
            fin_score.append(cand[done])
            fr, fs = np.concatenate(fin_req), np.concatenate(fin_score)
            best = _top_per_group(fr, fs, width)
            counts = np.bincount(fr[best], minlength=n)
            worst = np.full(n, np.inf)
            np.minimum.at(worst, fr[best], fs[best])
            kth = np.where(counts >= width, worst, -np.inf)
        # a live beam can only lose probability: drop it once its request holds `beams` better finished ones
        live = ~done & (cand > kth[req])
        rows, toks, kids, cand, req = rows[live], toks[live], kids[live], cand[live], req[live]
        # the survivors take their request's slots 0, 1, ...; empty slots copy the request's first row, dead
        order = np.argsort(req, kind="stable")
        rows, toks, kids, cand, req = rows[order], toks[order], kids[order], cand[order], req[order]
        first = np.searchsorted(req, req)
        slot = req * width + (np.arange(len(req)) - first)
        parent = np.repeat(np.arange(n) * width, width)
        parent[slot] = rows
        node = np.zeros(n * width, np.int64)
        node[slot] = kids
        score = np.full(n * width, -np.inf)
        score[slot] = cand
        new_last = np.full(n * width, start, np.int64)
        new_last[slot] = toks
        last = torch.as_tensor(new_last, device=device).view(-1, 1)
        if compact and len(req) > len(np.unique(req)):  # branched: `beams` fixed rows per request
            cache.reorder_cache(torch.as_tensor(parent // width, device=device))
            compact = False
        elif not compact:
            cache.self_attention_cache.reorder_cache(torch.as_tensor(parent, device=device))
    results = []
    fr = np.concatenate(fin_req) if fin_req else np.empty(0, np.int64)
    fl = np.concatenate(fin_leaf) if fin_leaf else np.empty(0, np.int64)
    fs = np.concatenate(fin_score) if fin_score else np.empty(0)
    best = _top_per_group(fr, fs, width) if len(fr) else np.empty(0, np.int64)
    by_req: dict[int, list[int]] = {}
    for i in best:  # already ordered by request, then score
        by_req.setdefault(int(fr[i]), []).append(int(i))
    for q in range(n):
        idx = by_req.get(q, [])
        items = [(a, fs[i]) for i in idx for a in trie.leaf_items[int(fl[i])]]
        results.append(
            Ranked(np.array([a for a, _ in items], np.int64), np.array([s for _, s in items], np.float64))
        )
    return results
