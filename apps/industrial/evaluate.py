"""Evaluation on the public datasets in their original layout: DeepPCB detection and CWRU vibration.

Every function returns ONE flat dict metric-name -> number (what ``triptych eval industrial --json``
writes). DeepPCB boards are decided by the service's own decision code (``service.InspectionRunner.judge``)
under the app's settings, as an image-only inspection: a board is judged defective when it is not passed
(fail or review).
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np


def board_inputs(sample, config, use_template: bool = True) -> dict:
    """The inputs evaluated for one DeepPCB board, prepared exactly as the service prepares a request.

    ``test``: the tested image (with its template when the model takes one and `use_template`).
    Defect-free boards: ``template`` (the defect-free template itself; the issue's definition) and
    ``repaired`` (the tested scan with its annotated boxes copied from the template, see
    ``data.repaired_scan``). With a template-aware model the template compared with itself has a
    zero difference image, so there the primary false-alarm board is ``repaired``, which keeps the
    real scan-vs-template noise; without a template it is ``template``, as for the gray model.
    ``reference``: per input, the template registered to it (``data.align_template``, as the service
    registers a request's template once for the detector input and the refutation), or None.
    ``prepare_seconds``: the time those registrations and encodings took (what the service spends on a decoded
    request before its detector runs; the repaired scan's making is the evaluation's own and not counted).
    """
    from apps.industrial.data import align_template, load_gray, repaired_scan
    from apps.industrial.detector import prepare_image

    template_mode = use_template and config.input == "template-diff" and sample.template is not None
    template = load_gray(sample.template) if sample.template is not None else None
    images = {"test": load_gray(sample.image)}
    if template is not None:
        images.update(template=template, repaired=repaired_scan(sample))
    out, reference = {}, {}
    start = time.perf_counter()
    for kind, image in images.items():
        reference[kind] = align_template(image, template) if template_mode else None
        out[kind] = prepare_image(image, config, reference[kind], registered=True)
    out["prepare_seconds"] = time.perf_counter() - start
    out["primary_clean"] = "repaired" if template_mode else "template"
    out["reference"] = reference  # what the service compares each box with
    return out


def board_readers(samples, config, use_template: bool = True, template_config=None) -> list[tuple[bool, bool]]:
    """Per board, as the service routes a request (``service.detector_route``): (read by the template-aware
    detector ``template_config``?, with its template?). A board has a template when its ``*_temp.jpg`` exists
    and `use_template`; it goes to the template-aware detector when one is given, else to ``config``'s."""
    from apps.industrial.service import detector_route

    return [detector_route(use_template and s.template is not None, config.input, template_config is not None) for s in samples]


def board_scores(model, config, samples, use_template: bool = True, nms_conf: float | None = None, progress: bool = False,
                 reclassifier=None, boards_per_call: int = 1, refute_min_diff: float | None = None,
                 template_model=None, template_config=None, runner=None):
    """Per board: detections on the tested image, the score of each board input and, given a ``runner``, its
    decision; seconds (detector calls, relabelling), forwards, and the seconds spent registering and encoding
    the inputs (``board_inputs``).

    Each board is read as the service reads a request (``board_readers``): with ``template_model`` /
    ``template_config`` (a template-aware detector) when it has a template and one is given, by ``model`` /
    ``config`` otherwise (with its template only when that one is template-aware too).

    ``runner``: the service's ``InspectionRunner`` over these detectors (``decision_runner``). Each input is then
    weighed and decided by the service's own code for an image-only inspection (``InspectionRunner.judge``): its
    policy's template refutation and minimum defect sizes set the score (the highest confidence among the boxes
    that count), its rule and review band give pass / fail / review. Without one (thresholds are chosen that way),
    only the template refutes boxes: fewer than ``refute_min_diff`` of their pixels differ from it (default the
    service's ``TEMPLATE_MIN_DIFF``). The returned detections (for mAP) keep every box, as the service lists them.

    The inputs of ``boards_per_call`` boards go to the detector in one call, as the batch endpoint sends
    boards (a detector with several workers splits the call across them; boards of one call read by two
    detectors make one call each). ``reclassifier`` (``reclassify.DefectReclassifier``): relabels the boxes of
    every input of a board read with its template, as the service relabels each image its template-aware
    detector reads (a class's minimum size then applies to the class the service reports); its time counts in
    ``seconds``. Confidences are the detector's either way.

    Returns ``top`` with one entry per board for every kind (NaN for a board without a template, which has
    no defect-free inputs), ``modes``, each board's primary defect-free kind (``board_inputs``): a board
    is read with or without its template on its own, as the service reads each request; and ``decisions``, per
    kind the runner's answer for each board (None without a runner or for an input the board lacks)."""
    from apps.industrial.detector import detect, detect_with_tokens
    from apps.industrial.service import TEMPLATE_MIN_DIFF, DecisionPolicy, InspectionItem, board_evidence

    if (template_model is None) != (template_config is None):
        raise ValueError("give the template-aware detector's model and config together")
    if runner is not None and refute_min_diff is not None:
        raise ValueError("a runner refutes boxes at its own policy's template_min_diff; give refute_min_diff without one")
    # Without a runner, the detector's own scores: no minimum sizes (thresholds are chosen on these), no decision.
    policy = runner.policy if runner is not None else DecisionPolicy(
        defect_threshold=1.0, template_min_diff=TEMPLATE_MIN_DIFF if refute_min_diff is None else refute_min_diff)
    with_tokens = runner is not None and runner.decision_rule == "learned"  # the learned fusion reads region tokens too
    readers = board_readers(samples, config, use_template, template_config)
    detectors = {False: (model, config), True: (template_model, template_config)}
    dets_test, top, modes, seconds, n, prepare_seconds = [], {"test": [], "template": [], "repaired": []}, [], 0.0, 0, 0.0
    decisions = {kind: [] for kind in top}
    for first in range(0, len(samples), boards_per_call):
        chunk = range(first, min(first + boards_per_call, len(samples)))
        boards = [board_inputs(samples[j], detectors[readers[j][0]][1], readers[j][1]) for j in chunk]
        by_template = [readers[j][0] for j in chunk]
        prepare_seconds += sum(b.pop("prepare_seconds") for b in boards)
        board_modes = [b.pop("primary_clean") for b in boards]
        references = [b.pop("reference") for b in boards]
        found = {}
        start = time.perf_counter()
        for which in sorted(set(by_template)):  # one call per detector over this chunk's boards it reads
            det_model, det_config = detectors[which]
            calls = [(i, kind) for i, b in enumerate(boards) if by_template[i] == which for kind in b]
            images = [boards[i][kind] for i, kind in calls]
            # mAP needs the low-confidence boxes (nms_conf 0.001); the service keeps >= 0.05. The extra boxes can only
            # give a board a score under 0.05, far below the bundles' thresholds: its decision stays the service's.
            conf = det_config.nms_conf if nms_conf is None else nms_conf
            if with_tokens:
                out, tokens = detect_with_tokens(det_model, images, det_config, conf=conf)
            else:
                out, tokens = detect(det_model, images, det_config, conf=conf), [None] * len(calls)
            if reclassifier is not None:  # every input of a board read with its template, as the service does
                read = [c for c, (i, _) in enumerate(calls) if board_modes[i] == "repaired"]
                relabelled = reclassifier.relabel_many([out[c] for c in read], [images[c].encoded for c in read], nms_iou=det_config.iou)
                for c, dets in zip(read, relabelled):
                    out[c] = dets
            found.update(zip(calls, zip(out, tokens)))
            n += len(calls)
        seconds += time.perf_counter() - start
        for i, board in enumerate(boards):
            scores = {"template": np.nan, "repaired": np.nan}
            verdicts = dict.fromkeys(top)
            for kind in board:
                (dets, tokens), ref = found[(i, kind)], references[i][kind]
                # encoded channel 0 is the (binarised) input image itself, which template_support binarises anyway
                item = InspectionItem(board[kind].encoded[..., 0], ref)
                if runner is None:
                    evidence = board_evidence(dets, item.image, item.template, policy)
                else:
                    evidence, verdict = runner.judge(item, dets, tokens)
                    verdicts[kind] = verdict["decision"]
                scores[kind] = evidence.max_conf
            dets_test.append(found[(i, "test")][0])
            for kind in top:
                top[kind].append(scores[kind])
                decisions[kind].append(verdicts[kind])
        modes += board_modes
        if progress and (first // boards_per_call + 1) % 25 == 0:
            print(f"  {first + len(boards)}/{len(samples)} boards", flush=True)
    return dets_test, {k: np.array(v, dtype=float) for k, v in top.items()}, modes, seconds, n, decisions, prepare_seconds


def decision_runner(settings, model, config, bundle, template_model=None, template_config=None, template_bundle=None):
    """The service's runner over the evaluated detectors (``service.assemble_runner``): the settings' thresholds,
    minimum sizes, review band and rule, with the fusion bundle where it fits these detectors, as ``load_runner``
    builds it. The vibration classifier is loaded to check that fit only: DeepPCB boards bring no vibration."""
    from apps.industrial.model import load_vibration_classifier
    from apps.industrial.service import assemble_runner

    vibration, vib_bundle = load_vibration_classifier(settings.vibration_dir)
    return assemble_runner(settings, model, config, bundle, vibration, vib_bundle, template_model, template_config,
                           template_bundle)


# Answers that do not pass a board: it is scrapped or reworked ("fail"), or held for a person to look at
# ("review"). Either way a good board so answered costs the line, and a defective one is caught.
NOT_PASSED = ("fail", "review")


def share_answered(verdicts: list, answers: tuple[str, ...]) -> float:
    """The share of boards with a verdict (not None) answered one of ``answers``; NaN when none has one."""
    known = [v for v in verdicts if v is not None]
    return float(np.mean([v in answers for v in known])) if known else float("nan")


def primary_clean_scores(top: dict[str, np.ndarray], modes: list[str]) -> np.ndarray:
    """Each board's defect-free score on its primary defect-free input (NaN for a board without a template)."""
    return np.array([top[mode][i] for i, mode in enumerate(modes)], dtype=float)


def choose_threshold(defective: np.ndarray, clean: np.ndarray, slack: float = 0.01) -> float:
    """Board decision threshold from max-confidence scores of defective and defect-free boards.

    Midway (in logit space) between the (1 - slack) quantile of the defect-free boards and the
    `slack` quantile of the defective ones, i.e. the widest margin that keeps <= slack false alarms
    and >= 1 - slack recall on these boards; if they overlap, the threshold with the fewest errors.
    Meant for TRAINING boards: validation groups must not choose it.
    """
    eps = 1e-4
    lo = float(np.quantile(clean, 1 - slack)) if len(clean) else 0.0
    hi = float(np.quantile(defective, slack)) if len(defective) else 1.0
    if lo < hi:
        def logit(p):
            return np.log(np.clip(p, eps, 1 - eps) / (1 - np.clip(p, eps, 1 - eps)))
        z = (logit(lo) + logit(hi)) / 2
        return float(round(1 / (1 + np.exp(-z)), 4))
    grid = np.unique(np.concatenate([clean, defective, [0.5]]))
    errors = [(clean >= t).sum() + (defective < t).sum() for t in grid]
    return float(round(grid[int(np.argmin(errors))], 4))


def evaluate_deeppcb(
    bundle_dir: Path,
    root: Path,
    split: str = "trainval.txt",
    threads: int = 1,
    limit: int | None = None,
    binarize: bool | None = None,
    progress: bool = False,
    backend: str = "onnx",
    precision: str = "fp32",
    use_template: bool = True,
    reclassifier=None,
    workers: int = 1,
    template_bundle_dir: Path | None = None,
    settings=None,
) -> dict[str, float]:
    """mAP on the tested images of `split`; board-level decisions on tested and defect-free boards.

    Boards are read as the service reads requests (``board_readers``): ``bundle_dir`` is its default
    detector (``detector_dir``), ``template_bundle_dir`` its optional template-aware one
    (``template_detector_dir``). A board with a template goes to the template-aware detector when one is
    given; a board without one (no ``*_temp.jpg``) to ``bundle_dir``'s, on the image alone, as the endpoint
    sends a request without a template. With no ``template_bundle_dir`` a template-aware ``bundle_dir`` reads
    boards with their template and the others without. ``use_template=False`` reads every board without
    its template (the template-aware detector is not loaded). Each board is decided at the threshold of the
    detector and path that read it; ``template_used``: the share of boards read with their template.
    ``map50``, ``board_false_alarm_rate``, ``board_recall`` etc. are over all boards together.

    Every board input is decided as the service decides an image-only inspection (no vibration) under
    ``settings`` (default: the app's cached ``get_settings()``, i.e. the ``TRIPTYCH_INDUSTRIAL_`` environment):
    its thresholds, ``min_defect_mm`` / ``min_defect_mm_by_class``, template refutation, decision rule and
    review band (``decision_runner``, ``board_scores``). ``board_false_alarm_rate``: share of defect-free boards
    (``board_inputs``) not passed; ``board_recall``: share of tested (defective) boards not passed. "Not passed"
    is fail or review (``NOT_PASSED``): a review board leaves the line for a person, so a clean one is a false
    alarm and a defective one is caught. ``board_review_rate_clean`` / ``board_review_rate_defective``: the
    shares answered review. ``board_fa@t`` / ``board_recall@t``: the same boards' scores (boxes that count
    only) cut at t, without a review band.

    ``images_per_second``: forward + NMS (+ the ``reclassifier``'s crops, which relabel the boxes of boards read
    with their template) on `threads` CPU threads shared by `workers` onnxruntime sessions per detector, the
    inputs of `workers` boards per call (split across the workers), image decoding and encoding excluded.
    ``images_per_second_with_preparation``: the same with the inputs' template registration and encoding
    (``preparation_ms_per_image``), image decoding still excluded.
    """
    import torch

    from apps.industrial.data import load_deeppcb
    from apps.industrial.detector import detection_scores, load_detector, load_onnx_detector
    from apps.industrial.settings import get_settings

    settings = settings if settings is not None else get_settings()
    torch.set_num_threads(threads)
    if backend != "onnx" and precision != "fp32":
        raise ValueError("INT8 runs through onnxruntime: use backend='onnx'")
    # the list is read before the detector loads: a wrong layout or an empty list is reported at once
    samples = load_deeppcb(root, split)[:limit]
    if not samples:
        raise ValueError(f"no boards to evaluate: split list {split!r} under {root} names none"
                         + (f" (or --limit {limit} keeps none)" if limit is not None else "")
                         + "; expected lines '<group>/<id>/<n>.jpg <group>/<id>_not/<n>.txt'")

    def load(bundle):
        return (load_onnx_detector(bundle, threads, precision=precision, workers=workers) if backend == "onnx"
                else load_detector(bundle))

    model, config, bundle = load(bundle_dir)
    template_model = template_config = template_bundle = None
    if use_template and template_bundle_dir is not None:
        template_model, template_config, template_bundle = load(template_bundle_dir)
        if template_config.input != "template-diff":  # as the service refuses it
            raise ValueError(f"{template_bundle_dir} holds a {template_config.input!r}-input detector, not a template-diff one")
    if binarize is not None:
        for c in (config, template_config):
            if c is not None:
                c.binarize = binarize
    runner = decision_runner(settings, model, config, bundle, template_model, template_config, template_bundle)
    if reclassifier is not None:
        reclassifier.warm_up()  # its one-off costs (~4 s of imports) are paid at load time, as the service loads it
    torch.set_num_threads(threads)  # the runner set the service's thread count; the evaluation runs on `threads`
    dets, top, modes, seconds, n_timed, decisions, prepare_seconds = board_scores(
        model, config, samples, use_template, progress=progress, reclassifier=reclassifier, boards_per_call=max(1, workers),
        template_model=template_model, template_config=template_config, runner=runner)
    readers = board_readers(samples, config, use_template, template_config)
    with_template = np.array([with_tmpl for _, with_tmpl in readers])
    threshold_template = runner.policy.threshold(True)
    threshold_no_template = runner.policy.threshold(False)
    scores = detection_scores(dets, [(s.boxes, s.classes) for s in samples])
    test_max, clean_max = top["test"], primary_clean_scores(top, modes)
    clean_decisions = [decisions[mode][i] for i, mode in enumerate(modes)]

    def rate(x, t):  # the share of boards (those with a score) at or above t
        known = ~np.isnan(x)
        return float((x[known] >= np.broadcast_to(t, x.shape)[known]).mean()) if known.any() else float("nan")

    result = {
        "map50": scores.map50,
        "map50_95": scores.map50_95,
        "precision": scores.precision,
        "recall": scores.recall,
        "board_false_alarm_rate": share_answered(clean_decisions, NOT_PASSED),
        "board_recall": share_answered(decisions["test"], NOT_PASSED),
        "images_per_second": n_timed / seconds if seconds else 0.0,
        # the same with each input's template registration and encoding, as the service pays them per request
        "images_per_second_with_preparation": n_timed / (seconds + prepare_seconds) if seconds else 0.0,
        "preparation_ms_per_image": 1000 * prepare_seconds / n_timed if n_timed else 0.0,
        "n_boards": float(len(test_max)),
        "n_templates": float((~np.isnan(top["template"])).sum()),
        # the threshold most boards were decided at; both are listed when boards can be read with a template
        "decision_threshold": float(threshold_template if with_template.mean() >= 0.5 else threshold_no_template),
        "template_used": float(with_template.mean()),  # the share of boards read with their template
        "board_fa_templates": share_answered(decisions["template"], NOT_PASSED),
        "board_fa_repaired": share_answered(decisions["repaired"], NOT_PASSED),
        "reclassified": float(with_template.mean()) if reclassifier is not None else 0.0,
        # the service's review band: boards answered review are counted as not passed in the two rates above
        "board_review_rate_clean": share_answered(clean_decisions, ("review",)),
        "board_review_rate_defective": share_answered(decisions["test"], ("review",)),
        "board_review_counted_as_defective": 1.0,
        "review_band": float(settings.review_band) if runner.decision_rule != "image" else 0.0,
        "min_defect_mm": float(settings.min_defect_mm),
    }
    if 0 < with_template.mean() < 1:
        import warnings

        reader = "the image-only detector" if config.input == "gray" else "the template-aware detector"
        note = "" if config.input == "gray" else " (a service with an image-only detector besides sends them there)"
        warnings.warn(f"{int((~with_template).sum())} of {len(modes)} boards have no template: they were read by {reader} "
                      f"{Path(bundle_dir).name} on the image alone, at its threshold without a template{note}", stacklevel=2)
    if template_config is not None or config.input == "template-diff":
        result["decision_threshold_template"] = float(threshold_template)
        result["decision_threshold_no_template"] = float(threshold_no_template)
    result.update({f"ap50_{k}": v for k, v in scores.per_class_ap50.items()})
    # Where a lower or higher threshold would put the two board-level error rates (for the card): the boards'
    # scores (the boxes that count under the settings) cut at t, no review band.
    for t in (0.1, 0.25, 0.5, 0.7):
        result[f"board_fa@{t}"] = rate(clean_max, t)
        result[f"board_recall@{t}"] = rate(test_max, t)
    return result


def select_thresholds(bundle_dir: Path, root: Path, split: str | Path, every: int = 3, threads: int = 1,
                      precision: str = "fp32", slack: float = 0.01, progress: bool = False, groups=()) -> dict[str, float]:
    """Decision thresholds (with and without template) from every `every`-th board of a TRAINING list.

    ``groups``: only these board groups of the list; for a bundle trained with groups held out
    (``held_out_groups`` in its config), they must be among those: boards the detector never saw,
    whose scores spread like the validation groups' rather than like memorised training boards'.
    """
    from apps.industrial.data import DEEPPCB_VAL_GROUPS, load_deeppcb, select_groups
    from apps.industrial.detector import load_onnx_detector

    samples = select_groups(load_deeppcb(root, split), include=tuple(groups))[::every]
    leaked = sorted({s.group for s in samples} & set(DEEPPCB_VAL_GROUPS))
    if leaked:
        raise ValueError(f"threshold list {split} contains validation board groups {leaked}; choose on training boards")
    model, config, bundle = load_onnx_detector(bundle_dir, threads, precision=precision)
    held_out = bundle.config.get("held_out_groups")
    if held_out is not None:
        seen = sorted({s.group for s in samples} - set(held_out))
        if seen:
            raise ValueError(f"{bundle_dir} was trained on board groups {seen}; choose its threshold on its held-out "
                             f"groups {held_out} (--groups)")
    out = {"n_boards": float(len(samples))}
    paths = (True, False) if config.input == "template-diff" else (False,)
    for use_template in paths:
        _, top, modes, *_ = board_scores(model, config, samples, use_template, nms_conf=0.05, progress=progress)
        read_alone = np.array([mode == "template" for mode in modes])
        # read without the template, the template itself is a defect-free board too; with it, it is trivially clean
        clean = np.concatenate([top["template"][read_alone], top["repaired"]])
        clean = clean[~np.isnan(clean)]
        key = "conf" if use_template or config.input == "gray" else "conf_no_template"
        out[key] = choose_threshold(top["test"], clean, slack)
        out[f"{key}_train_recall"] = float((top["test"] >= out[key]).mean())
        out[f"{key}_train_fa"] = float((clean >= out[key]).mean())
        out[f"{key}_train_clean_q99"] = float(np.quantile(clean, 1 - slack))
        out[f"{key}_train_defective_q01"] = float(np.quantile(top["test"], slack))
    return out


def evaluate_cwru(bundle_dir: Path, root: Path, threads: int = 1, sensor: str = "DE") -> dict[str, float]:
    """Every *.npz under root; label and rate from the file name; non-overlapping 2,048-sample windows.

    ``accuracy`` / ``macro_f1`` are over windows (4 machine states); ``macro_f1`` averages the states
    present in the set: a set of fault recordings alone (the other loads' files) must not score a
    zero F1 for "normal" whatever the model does; windows wrongly called normal still cost their own
    state's recall. ``recording_accuracy`` takes the majority vote of each recording's windows;
    ``fault_accuracy`` counts fault recordings' windows only. ``sensor``: the accelerometer read
    (``data.load_cwru``); the model is trained on the drive end's.
    """
    import torch

    from apps.industrial.data import FAULT_CLASSES, load_cwru
    from apps.industrial.model import load_vibration_classifier
    from apps.industrial.signals import MODEL_RATE, WINDOW, frame, resample
    from apps.industrial.train import predict_windows
    from core.metrics import classification_metrics

    torch.set_num_threads(threads)
    # every recording is read and framed before the model loads: bad files are reported at once
    framed = [(rec, frame(resample(rec.signal, rec.sample_rate, MODEL_RATE))) for rec in load_cwru(root, sensor)]
    framed = [(rec, windows) for rec, windows in framed if len(windows)]  # shorter than one window: skipped
    if not framed:
        raise ValueError(f"no CWRU recording under {root} is long enough for one {WINDOW}-sample window at "
                         f"{MODEL_RATE} Hz (about {WINDOW / MODEL_RATE:.2f} s of signal)")
    model, _ = load_vibration_classifier(bundle_dir)
    ys, ps, votes, by_rpm = [], [], [], {}
    for rec, windows in framed:
        probs = predict_windows(model, windows)
        y = np.full(len(windows), rec.label)
        ys.append(y), ps.append(probs)
        votes.append(int(np.bincount(probs.argmax(1), minlength=len(FAULT_CLASSES)).argmax() == rec.label))
        by_rpm.setdefault(rec.rpm, []).append(probs.argmax(1) == y)
    y, p = np.concatenate(ys), np.concatenate(ps)
    m = classification_metrics(y, p, labels=sorted(set(y.tolist())))
    fault = y != 0
    result = {
        "accuracy": float(m["accuracy"]),
        "macro_f1": float(m["macro_f1"]),
        "n_windows": float(len(y)),
        "fault_accuracy": float((p.argmax(1) == y)[fault].mean()) if fault.any() else float("nan"),
        "recording_accuracy": float(np.mean(votes)),
        "n_recordings": float(len(votes)),
    }
    for rpm, hits in sorted(by_rpm.items()):
        result[f"accuracy_{rpm}rpm"] = float(np.concatenate(hits).mean())
    for i, name in enumerate(FAULT_CLASSES):
        if (y == i).any():
            result[f"recall_{name}"] = float((p.argmax(1)[y == i] == i).mean())
    return result


def detector_speed(bundle_dir: Path, images: list[Path], threads: int, repeats: int = 1, batch: int = 1,
                   backend: str = "onnx", precision: str = "fp32", workers: int = 1) -> dict[str, float]:
    """Images/s of forward + NMS at the bundle's size on `threads` CPU threads shared by `workers` onnxruntime
    sessions, `batch` images per call (decoding excluded)."""
    import torch

    from apps.industrial.data import load_gray
    from apps.industrial.detector import detect, load_detector, load_onnx_detector, prepare_image

    torch.set_num_threads(threads)
    model, config, _ = (load_onnx_detector(bundle_dir, threads, precision=precision, workers=workers) if backend == "onnx"
                        else load_detector(bundle_dir))
    prepared = [prepare_image(load_gray(p), config) for p in images]
    detect(model, prepared[:batch], config)  # warm-up
    start, count = time.perf_counter(), 0
    for _ in range(repeats):
        for i in range(0, len(prepared), batch):
            detect(model, prepared[i : i + batch], config)
            count += len(prepared[i : i + batch])
    seconds = time.perf_counter() - start
    return {"images_per_second": count / seconds, "ms_per_image": 1000 * seconds / count, "threads": float(threads), "imgsz": float(config.imgsz)}


def precision_speed(bundle_dir: Path, images: list[Path], threads: int, rounds: int = 3,
                    precisions: tuple[str, ...] = ("fp32", "int8")) -> dict[str, float]:
    """Images/s of forward + NMS for each precision, measured interleaved in one process.

    Each round runs every precision over the same images, one after the other, so a load spike from
    other jobs on a shared machine hits all of them alike; the per-precision totals are compared.
    """
    import torch

    from apps.industrial.data import load_gray
    from apps.industrial.detector import detect, load_onnx_detector, prepare_image

    torch.set_num_threads(threads)
    models = {p: load_onnx_detector(bundle_dir, threads, precision=p) for p in precisions}
    config = models[precisions[0]][1]
    prepared = [prepare_image(load_gray(p), config) for p in images]
    seconds = dict.fromkeys(precisions, 0.0)
    for p in precisions:
        detect(models[p][0], prepared[:1], config)  # warm-up
    for _ in range(rounds):
        for p in precisions:
            start = time.perf_counter()
            for im in prepared:
                detect(models[p][0], [im], config)
            seconds[p] += time.perf_counter() - start
    n = rounds * len(prepared)
    return {f"{p}_{threads}thread_images_per_second": n / seconds[p] for p in precisions}


def service_speed(runner, samples, rounds: int = 2) -> dict[str, float]:
    """What a line sending one board at a time gets from the service's runner (``service.InspectionRunner``,
    no HTTP): boards per second and ms per board, decoded images in, verdicts out (template registration,
    encoding, detector, classifier, decision), with each DeepPCB board's template and without one. The two
    modes alternate board by board so that a load spike on a shared machine hits both alike."""
    from apps.industrial.data import load_gray
    from apps.industrial.service import InspectionItem

    pairs = [(load_gray(s.image), load_gray(s.template)) for s in samples if s.template is not None]
    if not pairs:
        raise ValueError("service_speed needs DeepPCB boards with templates")
    modes = {"with_template": lambda a, b: InspectionItem(a, b), "image_only": lambda a, b: InspectionItem(a, None)}
    for make in modes.values():  # warm-up: first calls allocate
        runner.predict_batch([make(*pairs[0])])
    seconds = dict.fromkeys(modes, 0.0)
    for _ in range(rounds):
        for image, template in pairs:
            for mode, make in modes.items():
                item = make(image, template)  # built outside the clock: a request's decoding is not the model's
                start = time.perf_counter()
                runner.predict_batch([item])
                seconds[mode] += time.perf_counter() - start
    n = rounds * len(pairs)
    out = {}
    for mode in modes:
        out[f"service_{mode}_boards_per_second"] = n / seconds[mode]
        out[f"service_{mode}_ms_per_board"] = 1000 * seconds[mode] / n
    return out
