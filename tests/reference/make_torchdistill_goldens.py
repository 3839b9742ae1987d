"""Generate reference golden files with torchdistill's OWN loss classes.

Run in the separate reference environment (NOT the default kdspec install)::

    python3 -m venv /work/main/.venv-ref
    /work/main/.venv-ref/bin/pip install torch==2.14.1 torchvision==0.29.1 torchdistill==1.1.5
    /work/main/.venv-ref/bin/python tests/reference/make_torchdistill_goldens.py

Each case builds seeded float64 inputs, lays them out in torchdistill's io_dict convention
(``{module_path: {"input"|"output": value}}``), constructs the loss through torchdistill's
registry (``get_mid_level_loss``), computes the loss and the gradient w.r.t. every input that
requires grad, and writes ``golden/<case>.pt`` plus ``golden/MANIFEST.json``.

Golden file schema (plain tensors / dicts / lists / str / float / int / None, so
``torch.load(path, weights_only=True)`` works)::

    case               str
    torchdistill_class str      registry key of the mid-level loss (or low-level loss)
    kwargs             dict     constructor kwargs of that class
    criterion_wrapper  dict|None torchdistill wrapper config (FitNets only)
    io_layout          dict     {"student": io, "teacher": io, "targets": name|None} where io is
                                {module_path: {io_key: input_name | [names] (tuple) | {k: name}}}
    inputs             {name: tensor}
    loss               0-d float64 tensor
    loss_shape_raw     list[int] shape torchdistill actually returned (CRD returns [1])
    grads              {name: tensor}  d loss / d input for every input with requires_grad
    state              dict     stateful losses only (CRD memory banks before/after)
    float32_internal   bool     True where torchdistill keeps float32 internals
    notes              str
"""

from __future__ import annotations

import hashlib
import json
import platform
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
import torchdistill
from torchdistill.losses.registry import MIDDLE_LEVEL_LOSS_DICT, get_mid_level_loss

GOLDEN_DIR = Path(__file__).resolve().parent / "golden"
MAX_BYTES = 200 * 1024
DTYPE = torch.float64
B = 8

# ----------------------------------------------------------------------------- helpers


def rand(*shape: int, grad: bool = False, scale: float = 1.0) -> torch.Tensor:
    t = (torch.randn(*shape, dtype=DTYPE) * scale).detach()
    return t.requires_grad_(grad)


def fmap_pair(path: str, s_io: str = "output", t_io: str = "output", t_path: str | None = None):
    return {"student": {"io": s_io, "path": path}, "teacher": {"io": t_io, "path": t_path or path}}


def resolve(layout: Any, inputs: dict[str, torch.Tensor]) -> Any:
    """Turn an io_layout (names) into a real io_dict (tensors)."""
    if isinstance(layout, str):
        return inputs[layout]
    if isinstance(layout, list):
        return tuple(resolve(v, inputs) for v in layout)
    if isinstance(layout, dict):
        return {k: resolve(v, inputs) for k, v in layout.items()}
    raise TypeError(layout)


class Case:
    def __init__(
        self,
        name: str,
        key: str,
        kwargs: dict,
        inputs: dict[str, torch.Tensor],
        student: dict,
        teacher: dict,
        targets: str | None = None,
        wrapper: dict | None = None,
        notes: str = "",
        float32_internal: bool = False,
        prepare: Callable[[torch.nn.Module], None] | None = None,
    ) -> None:
        self.name = name
        self.key = key
        self.kwargs = kwargs
        self.inputs = inputs
        self.student = student
        self.teacher = teacher
        self.targets = targets
        self.wrapper = wrapper
        self.notes = notes
        self.float32_internal = float32_internal
        self.prepare = prepare


def build_loss(case: Case) -> torch.nn.Module:
    return get_mid_level_loss({"key": case.key, "kwargs": case.kwargs}, case.wrapper)


def run_case(case: Case, loss_module: torch.nn.Module | None = None) -> dict:
    loss_module = loss_module if loss_module is not None else build_loss(case)
    state: dict[str, Any] = {}
    if case.prepare is not None:
        case.prepare(loss_module)
    if hasattr(loss_module, "memory_v1"):  # CRD: record the memory state before the step
        state["memory_v1_init"] = loss_module.memory_v1.detach().clone()
        state["memory_v2_init"] = loss_module.memory_v2.detach().clone()
        state["params_init"] = loss_module.params.detach().clone()
    s_io = resolve(case.student, case.inputs)
    t_io = resolve(case.teacher, case.inputs)
    targets = case.inputs[case.targets] if case.targets is not None else None
    raw = loss_module(s_io, t_io, targets)
    assert isinstance(raw, torch.Tensor), type(raw)
    assert raw.numel() == 1, raw.shape
    loss = raw.reshape(())
    grad_names = [n for n, t in case.inputs.items() if t.requires_grad]
    grads = torch.autograd.grad(loss, [case.inputs[n] for n in grad_names])
    if hasattr(loss_module, "memory_v1"):
        state["memory_v1_after"] = loss_module.memory_v1.detach().clone()
        state["memory_v2_after"] = loss_module.memory_v2.detach().clone()
        state["params_after"] = loss_module.params.detach().clone()
    return {
        "case": case.name,
        "torchdistill_class": case.key,
        "kwargs": case.kwargs,
        "criterion_wrapper": case.wrapper,
        "io_layout": {"student": case.student, "teacher": case.teacher, "targets": case.targets},
        "inputs": {n: t.detach().clone() for n, t in case.inputs.items()},
        "loss": loss.detach().clone(),
        "loss_shape_raw": list(raw.shape),
        "grads": {n: g.detach().clone() for n, g in zip(grad_names, grads, strict=True)},
        "state": state,
        "float32_internal": case.float32_internal,
        "notes": case.notes,
    }


# ----------------------------------------------------------------------------- cases


def logit_io(path: str = ".") -> tuple[dict, dict]:
    return {path: {"output": "student_logits"}}, {path: {"output": "teacher_logits"}}


def kd_case(name: str, alpha: float, beta: float | None, with_targets: bool, notes: str) -> Case:
    torch.manual_seed(hash_seed(name))
    inputs = {
        "student_logits": rand(B, 10, grad=True, scale=2.0),
        "teacher_logits": rand(B, 10, scale=3.0),
    }
    if with_targets:
        inputs["targets"] = torch.randint(0, 10, (B,), dtype=torch.int64)
    s, t = logit_io()
    kwargs = {
        "student_module_path": ".",
        "student_module_io": "output",
        "teacher_module_path": ".",
        "teacher_module_io": "output",
        "temperature": 4.0,
        "alpha": alpha,
        "beta": beta,
        "reduction": "batchmean",
    }
    return Case(
        name, "KDLoss", kwargs, inputs, s, t, "targets" if with_targets else None, notes=notes
    )


def hash_seed(name: str) -> int:
    """Stable per-case seed (Python's hash() is salted, so use sha256)."""
    return int.from_bytes(hashlib.sha256(name.encode()).digest()[:4], "little")


def cases() -> list[Case]:
    out: list[Case] = []

    # --- KD --------------------------------------------------------------------------------
    out.append(
        kd_case(
            "kd",
            0.1,
            0.9,
            True,
            "alpha*CE(s, y) + beta*T^2*KL(softmax(t/T) || log_softmax(s/T)), KL batchmean "
            "(sum/B), CE mean. mid_level.py KDLoss.forward.",
        )
    )
    out.append(
        kd_case(
            "kd_soft_only",
            0.0,
            None,
            False,
            "alpha=0, no targets: torchdistill returns the bare KL (batchmean) WITHOUT T^2 and "
            "without beta (beta defaults to 1-alpha=1). alpha=None with beta=None raises "
            "TypeError in __init__ (1 - None), so 'soft only' needs alpha=0.",
        )
    )
    out.append(
        kd_case(
            "kd_alpha0",
            0.0,
            0.9,
            True,
            "Documented quirk: alpha == 0 -> bare KL even though targets are given and beta=0.9; "
            "neither beta nor T^2 is applied (loss equals kd_soft_only's formula).",
        )
    )
    out.append(
        kd_case(
            "kd_no_targets",
            0.1,
            0.9,
            False,
            "Quirk: alpha=0.1 but targets=None -> bare KL (no T^2, no beta).",
        )
    )

    # --- FitNets (MSELoss via SimpleLossWrapper) ------------------------------------------
    for red in ("sum", "mean"):
        name = "fitnets" if red == "sum" else "fitnets_mean"
        torch.manual_seed(hash_seed(name))
        inputs = {
            "student_regressor": rand(B, 16, 4, 4, grad=True),
            "teacher_layer3": rand(B, 16, 4, 4),
        }
        wrapper = {
            "key": "SimpleLossWrapper",
            "kwargs": {
                "input": {"is_from_teacher": False, "module_path": "regressor", "io": "output"},
                "target": {"is_from_teacher": True, "module_path": "layer3", "io": "output"},
            },
        }
        out.append(
            Case(
                name,
                "MSELoss",
                {"reduction": red},
                inputs,
                {"regressor": {"output": "student_regressor"}},
                {"layer3": {"output": "teacher_layer3"}},
                wrapper=wrapper,
                notes=f"FitNets hint = torch.nn.MSELoss(reduction='{red}') from LOSS_DICT "
                "wrapped by SimpleLossWrapper; input = student ConvReg ('regressor') output, "
                "target = teacher layer output. torchdistill's sample FitNets config uses "
                "reduction 'sum' (no 1/2, no /B).",
            )
        )

    # --- AT --------------------------------------------------------------------------------
    at_shapes = [  # (student shape, teacher shape, weight): channels differ, spatial equal
        ((B, 4, 8, 8), (B, 8, 8, 8), 1.0),
        ((B, 16, 4, 4), (B, 32, 4, 4), 0.5),
        ((B, 32, 2, 2), (B, 64, 2, 2), 2.0),
    ]
    for mode in ("paper", "code"):
        name = f"at_{mode}"
        torch.manual_seed(hash_seed(name))
        inputs, s_io, t_io, pairs = {}, {}, {}, {}
        for i, (ss, ts, w) in enumerate(at_shapes, start=1):
            inputs[f"student_layer{i}"] = rand(*ss, grad=True)
            inputs[f"teacher_layer{i}"] = rand(*ts)
            s_io[f"layer{i}"] = {"output": f"student_layer{i}"}
            t_io[f"layer{i}"] = {"output": f"teacher_layer{i}"}
            pairs[f"pair{i}"] = {**fmap_pair(f"layer{i}"), "weight": w}
        note = (
            "paper: a = F.normalize(sum_c F^2 flattened) (L2), per pair sum_b ||a_s-a_t||_2, "
            "total sum_pairs w*... / B"
            if mode == "paper"
            else "code: a = F.normalize(mean_c F^2 flattened) (L2), per pair "
            "mean((a_s-a_t)^2) over B*HW, total sum_pairs w*...; no extra /B, no beta/2, "
            "p=2 hard-coded"
        )
        out.append(
            Case(
                name,
                "ATLoss",
                {"at_pairs": pairs, "mode": mode},
                inputs,
                s_io,
                t_io,
                notes=note + ". Pair weights 1.0/0.5/2.0.",
            )
        )

    # --- FSP -------------------------------------------------------------------------------
    name = "fsp"
    torch.manual_seed(hash_seed(name))
    fsp_shapes = {  # pair -> (first shape, second shape); same for student and teacher
        "pair1": ((B, 4, 8, 8), (B, 4, 8, 8)),
        "pair2": ((B, 4, 8, 8), (B, 8, 4, 4)),
    }
    inputs, s_io, t_io, pairs = {}, {}, {}, {}
    weights = {"pair1": 1.0, "pair2": 0.5}
    for p, (fs, ss) in fsp_shapes.items():
        for side, io in (("student", s_io), ("teacher", t_io)):
            inputs[f"{side}_{p}_first"] = rand(*fs, grad=side == "student")
            inputs[f"{side}_{p}_second"] = rand(*ss, grad=side == "student")
            io[f"{p}.first"] = {"output": f"{side}_{p}_first"}
            io[f"{p}.second"] = {"output": f"{side}_{p}_second"}
        pairs[p] = {
            "student_first": {"io": "output", "path": f"{p}.first"},
            "student_second": {"io": "output", "path": f"{p}.second"},
            "teacher_first": {"io": "output", "path": f"{p}.first"},
            "teacher_second": {"io": "output", "path": f"{p}.second"},
            "weight": weights[p],
        }
    out.append(
        Case(
            name,
            "FSPLoss",
            {"fsp_pairs": pairs},
            inputs,
            s_io,
            t_io,
            notes="G = first.flatten(2) @ second.flatten(2)^T / hw (after adaptive_max_pool2d of "
            "the larger map to the smaller spatial size: pair2's first map 8x8 -> 4x4); "
            "loss = sum_pairs w * (G_s-G_t).norm(dim=1).sum() / B -- an L2 norm over dim 1 "
            "(first-map channels), summed over (b, second-map channel); NOT the paper's squared "
            "Frobenius norm. Pair weights 1.0/0.5.",
        )
    )

    # --- SP --------------------------------------------------------------------------------
    name = "sp"
    torch.manual_seed(hash_seed(name))
    inputs = {"student_layer4": rand(B, 16, 4, 4, grad=True), "teacher_layer4": rand(B, 32, 4, 4)}
    out.append(
        Case(
            name,
            "SPKDLoss",
            {
                "student_output_path": "layer4",
                "teacher_output_path": "layer4",
                "reduction": "batchmean",
            },
            inputs,
            {"layer4": {"output": "student_layer4"}},
            {"layer4": {"output": "teacher_layer4"}},
            notes="G = z z^T with z = flatten(1); n(G) = F.normalize(G, 1) -> the positional 1 is "
            "p, so rows are L1-normalised (dim=1 default) instead of the paper's L2; loss = "
            "||n(G_t) - n(G_s)||_F^2 / B^2.",
        )
    )

    # --- RKD -------------------------------------------------------------------------------
    for name, df, af in (("rkd", 25.0, 50.0), ("rkd_dist", 25.0, 0.0), ("rkd_angle", 0.0, 50.0)):
        torch.manual_seed(hash_seed(name))
        inputs = {"student_embed": rand(B, 64, grad=True), "teacher_embed": rand(B, 128)}
        out.append(
            Case(
                name,
                "RKDLoss",
                {
                    "student_output_path": "fc",
                    "teacher_output_path": "fc",
                    "dist_factor": df,
                    "angle_factor": af,
                    "reduction": "mean",
                },
                inputs,
                {"fc": {"output": "student_embed"}},
                {"fc": {"output": "teacher_embed"}},
                notes="pdist: sqrt(clamp(|e_i|^2+|e_j|^2-2e_i.e_j, min=1e-12)), diagonal set to 0, "
                "divided by the mean of the positive entries; angle: normalize(e_j - e_i) "
                "(F.normalize eps 1e-12) Gram over all B^3 triples including degenerate i=j ones; "
                "both via SmoothL1Loss(beta=1, reduction='mean'); teacher terms under no_grad. "
                "A factor of 0 skips that term; a factor of None raises TypeError in forward "
                "(None * 0) despite the None check.",
            )
        )

    # --- PKT -------------------------------------------------------------------------------
    name = "pkt"
    torch.manual_seed(hash_seed(name))
    inputs = {"student_embed": rand(B, 64, grad=True), "teacher_embed": rand(B, 128)}
    out.append(
        Case(
            name,
            "PKTLoss",
            {
                "student_module_path": "fc",
                "student_module_io": "input",
                "teacher_module_path": "fc",
                "teacher_module_io": "input",
                "eps": 1e-7,
            },
            inputs,
            {"fc": {"input": "student_embed"}},
            {"fc": {"input": "teacher_embed"}},
            notes="x/(||x||+eps); cos-sim Gram; (S+1)/2; row-normalise to probabilities; "
            "mean over all B^2 entries of P_t*log((P_t+eps)/(P_s+eps)) (a mean, not a per-row "
            "sum).",
        )
    )

    # --- VID -------------------------------------------------------------------------------
    name = "vid"
    torch.manual_seed(hash_seed(name))
    inputs, s_io, t_io, pairs = {}, {}, {}, {}
    for i, shape in enumerate(((B, 16, 4, 4), (B, 32, 2, 2)), start=1):
        c = shape[1]
        inputs[f"student_reg{i}_mean"] = rand(*shape, grad=True)
        # what Regressor4VID outputs: softplus(param) + eps, shaped [1, C, 1, 1]
        var = F.softplus(torch.randn(c, dtype=DTYPE)) + 1e-5
        inputs[f"student_reg{i}_var"] = var.view(1, c, 1, 1).detach().requires_grad_(True)
        inputs[f"teacher_layer{i}"] = rand(*shape)
        s_io[f"regressor_dict.regressor{i}"] = {
            "output": [f"student_reg{i}_mean", f"student_reg{i}_var"]
        }
        t_io[f"layer{i}"] = {"output": f"teacher_layer{i}"}
        pairs[f"pair{i}"] = {
            "student": {"io": "output", "path": f"regressor_dict.regressor{i}"},
            "teacher": {"io": "output", "path": f"layer{i}"},
            "weight": 1.0 if i == 1 else 0.5,
        }
    out.append(
        Case(
            name,
            "VIDLoss",
            {"feature_pairs": pairs},
            inputs,
            s_io,
            t_io,
            notes="student io value is the (pred_mean, pred_var) tuple of Regressor4VID; pred_var "
            "is per-channel [1, C, 1, 1] (softplus(param)+eps), broadcast over B,H,W. loss = "
            "sum_pairs w * mean(0.5*((mu-t)^2/var + log var)); the mean is over B*C*H*W, so the "
            "log-var term is averaged, not summed, over positions; no log(2*pi) constant. "
            "Pair weights 1.0/0.5.",
        )
    )

    # --- AB --------------------------------------------------------------------------------
    for red in ("mean", "sum"):
        name = "ab" if red == "mean" else "ab_sum"
        torch.manual_seed(hash_seed(name))
        inputs, s_io, t_io, pairs = {}, {}, {}, {}
        for i, shape in enumerate(((B, 16, 4, 4), (B, 32, 2, 2)), start=1):
            inputs[f"student_connector{i}"] = rand(*shape, grad=True, scale=1.5)
            inputs[f"teacher_layer{i}"] = rand(*shape)
            s_io[f"connector_dict.connector{i}"] = {"output": f"student_connector{i}"}
            t_io[f"layer{i}"] = {"output": f"teacher_layer{i}"}
            pairs[f"pair{i}"] = {
                "student": {"io": "output", "path": f"connector_dict.connector{i}"},
                "teacher": {"io": "output", "path": f"layer{i}"},
                "weight": 1.0 if i == 1 else 0.5,
            }
        out.append(
            Case(
                name,
                "AltActTransferLoss",
                {"feature_pairs": pairs, "margin": 1.0, "reduction": red},
                inputs,
                s_io,
                t_io,
                notes="sum (s+m)^2*[s>-m & t<=0] + (s-m)^2*[s<=m & t>0] over all elements, "
                "times pair weight; divided by B if reduction=='mean', else (any other value, "
                "e.g. 'sum') returned as is. Masks are cast with .float() (float32) but promote "
                "back to float64, so no precision loss. Pair weights 1.0/0.5.",
            )
        )

    # --- FT --------------------------------------------------------------------------------
    for name, p in (("ft", 1), ("ft_p2", 2)):
        torch.manual_seed(hash_seed(name))
        inputs = {
            "student_translator": rand(B, 16, 4, 4, grad=True),
            "teacher_paraphraser": rand(B, 16, 4, 4),
        }
        out.append(
            Case(
                name,
                "FTLoss",
                {
                    "p": p,
                    "reduction": "mean",
                    "paraphraser_path": "paraphraser",
                    "translator_path": "translator",
                },
                inputs,
                {"translator": {"output": "student_translator"}},
                {"paraphraser": {"output": "teacher_paraphraser"}},
                notes="factors flattened and divided by their per-sample L2 norm (no eps); "
                + (
                    "p=1: F.l1_loss(reduction='mean') -> mean over B*D elements (the paper's "
                    "per-sample L1 norm divided additionally by D)."
                    if p == 1
                    else "p!=1: mean over B of the per-sample p-norm of the difference."
                ),
            )
        )

    # --- DIST ------------------------------------------------------------------------------
    for name, tau in (("dist", 1.0), ("dist_tau4", 4.0)):
        torch.manual_seed(hash_seed(name))
        inputs = {
            "student_logits": rand(B, 10, grad=True, scale=2.0),
            "teacher_logits": rand(B, 10, scale=3.0),
        }
        s, t = logit_io()
        out.append(
            Case(
                name,
                "DISTLoss",
                {
                    "student_module_path": ".",
                    "student_module_io": "output",
                    "teacher_module_path": ".",
                    "teacher_module_io": "output",
                    "beta": 1.0,
                    "gamma": 1.0,
                    "tau": tau,
                    "eps": 1e-8,
                },
                inputs,
                s,
                t,
                notes="y = softmax(z/tau); inter = tau^2*(1 - mean_b pearson(y_s[b], y_t[b])); "
                "intra = tau^2*(1 - mean_c pearson(y_s[:,c], y_t[:,c])); pearson = "
                "F.cosine_similarity of mean-centred vectors (eps=1e-8); loss = beta*inter + "
                "gamma*intra.",
            )
        )

    # --- HCL (ReviewKD) --------------------------------------------------------------------
    for name, shape in (("hcl", (B, 8, 8, 8)), ("hcl_small", (B, 16, 4, 4))):
        torch.manual_seed(hash_seed(name))
        inputs = {
            "student_abf_features": rand(*shape, grad=True),
            "student_abf_residual": rand(*shape),
            "teacher_layer": rand(*shape),
        }
        out.append(
            Case(
                name,
                "HierarchicalContextLoss",
                {
                    "student_module_path": "abf_modules.4",
                    "student_module_io": "output",
                    "teacher_module_path": "layer1.-1.relu",
                    "teacher_module_io": "input",
                    "reduction": "mean",
                    "output_sizes": None,
                },
                inputs,
                {"abf_modules.4": {"output": ["student_abf_features", "student_abf_residual"]}},
                {"layer1.-1.relu": {"input": "teacher_layer"}},
                notes="student io value is AttentionBasedFusion's output tuple (y, x) = "
                "(features, residual); only element 0 is used (the residual is ignored, so it "
                "has no grad). output_sizes None -> [4, 2, 1]; sizes k >= H are skipped; loss = "
                "(MSE + sum_k 2^-i MSE(avgpool_k)) / (1 + sum 2^-i) with i counting only the "
                "levels actually used. "
                + (
                    "H=8: levels 4,2,1 used, weights 1, .5, .25, .125 (total 1.875)."
                    if shape[2] == 8
                    else "H=4: level 4 skipped, levels 2,1 get weights .5, .25 (total 1.75)."
                ),
            )
        )

    return out


# ----------------------------------------------------------------------------- CRD

CRD_KW = {
    "student_norm_module_path": "normalizer",
    "student_empty_module_path": "empty",
    "teacher_norm_module_path": "normalizer",
    "input_size": 32,
    "output_size": 64,
    "num_negative_samples": 16,
    "num_samples": 64,
    "temperature": 0.07,
    "momentum": 0.5,
    "eps": 1e-7,
}

CRD_NOTES = (
    "CRDLoss does NOT own the embedding Linear layers: they live in the models' Linear4CRD "
    "wrappers (Normalizer4CRD: z/||z||_2), so the inputs here are already L2-normalised "
    "embeddings found at io_dict['normalizer']['output']; the supp dict {'pos_idx', "
    "'contrast_idx'} is the INPUT of the student's 'empty' module. contrast_idx is given "
    "explicitly ([B, K+1], column 0 == pos_idx) because draw() references self.prob (typo, "
    "AttributeError). Buffers (memory_v1, memory_v2, params) are created float32 under the seed "
    "and the module is then converted with .double() (float64 inputs otherwise fail in bmm with "
    "'expected scalar type Float but found Double'); hence the temperature is the float32 "
    "value of 0.07 widened (params[1] = 0.07000000029802322). Scores: out_v2 = "
    "exp(memory_v1[idx] @ t / T), out_v1 = exp(memory_v2[idx] @ s / T); on the first call "
    "Z_v1 = mean(out_v1)*N, Z_v2 = mean(out_v2)*N are stored via .item() (no gradient through "
    "Z); loss = NCE(out_v1/Z_v1) + NCE(out_v2/Z_v2) with NCE(x) = -(sum_b log(x0/(x0+K/Ns+eps)) + "
    "sum_b,k log((K/Ns)/(xk+K/Ns+eps)))/B. Memory update after scoring (no grad): "
    "memory_v1[pos] = normalize(m*memory_v1[pos] + (1-m)*s), memory_v2[pos] = "
    "normalize(m*memory_v2[pos] + (1-m)*t). CRDLoss returns shape [1] (not 0-d). Gradients are "
    "given for BOTH embeddings: the teacher's Linear4CRD head is trainable in CRD. "
)


def crd_cases() -> list[tuple[Case, torch.nn.Module]]:
    """Two consecutive steps on one CRDLoss instance (step 2 starts from step 1's after-state)."""
    torch.manual_seed(hash_seed("crd"))
    module = build_loss(Case("crd", "CRDLoss", CRD_KW, {}, {}, {})).double()
    k, n = CRD_KW["num_negative_samples"], CRD_KW["num_samples"]
    result = []
    for step, name in enumerate(("crd", "crd_step2"), start=1):
        torch.manual_seed(hash_seed(name) + 1)
        s = F.normalize(torch.randn(B, 32, dtype=DTYPE), dim=1).requires_grad_(True)
        t = F.normalize(torch.randn(B, 32, dtype=DTYPE), dim=1).requires_grad_(True)
        pos = torch.randperm(n)[:B].to(torch.int64)
        neg = torch.randint(0, n, (B, k), dtype=torch.int64)
        contrast = torch.cat([pos.view(B, 1), neg], dim=1)
        inputs = {"student_embed": s, "teacher_embed": t, "pos_idx": pos, "contrast_idx": contrast}
        case = Case(
            name,
            "CRDLoss",
            dict(CRD_KW),
            inputs,
            {
                "normalizer": {"output": "student_embed"},
                "empty": {"input": {"pos_idx": "pos_idx", "contrast_idx": "contrast_idx"}},
            },
            {"normalizer": {"output": "teacher_embed"}},
            notes=CRD_NOTES
            + (
                "Step 1: Z constants are unset (-1) in params_init and set during this call."
                if step == 1
                else "Step 2 on the SAME module: state init == crd's state after; Z already set "
                "(params_init[2:4]) and reused."
            ),
            float32_internal=True,
        )
        result.append((case, module))
    return result


# ----------------------------------------------------------------------------- main


def shapes(d: dict) -> dict:
    return {n: list(t.shape) for n, t in d.items()}


def main() -> int:
    GOLDEN_DIR.mkdir(parents=True, exist_ok=True)
    for old in GOLDEN_DIR.glob("*.pt"):
        old.unlink()
    all_cases = [(c, None) for c in cases()] + crd_cases()
    manifest_cases = []
    seen = set()
    for case, module in all_cases:
        assert case.name not in seen, case.name
        seen.add(case.name)
        if case.wrapper is None:
            assert case.key in MIDDLE_LEVEL_LOSS_DICT, case.key
        golden = run_case(case, module)
        loss = golden["loss"]
        assert loss.dtype == DTYPE and torch.isfinite(loss), (case.name, loss)
        for g in golden["grads"].values():
            assert g.dtype == DTYPE and torch.isfinite(g).all(), case.name
        path = GOLDEN_DIR / f"{case.name}.pt"
        torch.save(golden, path)
        size = path.stat().st_size
        assert size < MAX_BYTES, (case.name, size)
        torch.load(path, weights_only=True)  # round-trip check
        manifest_cases.append(
            {
                "case": case.name,
                "file": path.name,
                "torchdistill_class": case.key,
                "kwargs": case.kwargs,
                "criterion_wrapper": case.wrapper,
                "input_shapes": shapes(golden["inputs"]),
                "input_dtypes": {n: str(t.dtype) for n, t in golden["inputs"].items()},
                "grad_names": sorted(golden["grads"]),
                "state_shapes": shapes(golden["state"]),
                "loss": float(loss),
                "loss_shape_raw": golden["loss_shape_raw"],
                "float32_internal": case.float32_internal,
                "notes": case.notes,
                "size_bytes": size,
                "sha256": hashlib.sha256(path.read_bytes()).hexdigest(),
            }
        )
        print(f"{case.name:16s} {case.key:24s} loss={float(loss):.10g} size={size}")
    manifest = {
        "generator": "tests/reference/make_torchdistill_goldens.py",
        "torchdistill_version": torchdistill.__version__,
        "torch_version": torch.__version__,
        "python_version": platform.python_version(),
        "dtype": str(DTYPE),
        "batch_size": B,
        "float32_internal_cases": [c["case"] for c in manifest_cases if c["float32_internal"]],
        "total_bytes": sum(c["size_bytes"] for c in manifest_cases),
        "cases": manifest_cases,
    }
    text = json.dumps(manifest, indent=2) + "\n"
    (GOLDEN_DIR / "MANIFEST.json").write_text(text)
    print(f"{len(manifest_cases)} goldens, {manifest['total_bytes']} bytes -> {GOLDEN_DIR}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
