"""Masks in and out of the rest of the PyTorch world (``training.interop``): torch.nn.utils.prune
round trips, state dicts with ``*_orig``/``*_mask`` keys, export with ``prune.remove``, and
open_lth's ``mask.pth`` imported by ``python -m training import-mask`` and read by the analysis tools."""
from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest
import torch
from torch import nn
from torch.nn.utils import prune

from training.__main__ import main
from training.engine.checkpoint import load, make_checkpoint, read_checkpoint
from training.errors import UserError
from training.hparams import DatasetHparams
from training.interop import (
    apply_mask,
    export_ticket,
    mask_from_pruned,
    mask_from_state_dict,
    pruned_model,
    read_mask_file,
)
from training.models import build_model
from training.sparsity import masks as toolkit


def _mlp(seed: int = 0) -> nn.Module:
    return build_model("mnist1d_mlp", 10, (1, 40), seed)


def _random_mask(model: nn.Module, keep: float = 0.3, seed: int = 1) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    params = dict(model.named_parameters())
    return {n: torch.rand(params[n].shape, generator=g) < keep for n in toolkit.prunable_names(model)}


def test_toolkit_mask_through_torch_prune_and_back_is_identical():
    model, mask = _mlp(), _random_mask(_mlp())
    reference = copy.deepcopy(model)
    toolkit.apply_mask(reference, mask)  # the toolkit's masked network: pruned weights set to zero

    assert apply_mask(model, mask) is model
    assert prune.is_pruned(model)
    names = dict(model.named_parameters())
    assert "1.weight_orig" in names and "1.weight" not in names  # what torch.nn.utils.prune users expect
    assert isinstance(model[1].weight_mask, torch.Tensor) and model[1].weight_mask.dtype == torch.float32

    back = mask_from_pruned(model)
    assert back.keys() == mask.keys()
    assert all(back[k].dtype == torch.bool and torch.equal(back[k], mask[k]) for k in mask)
    x = torch.randn(64, 1, 40, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        assert torch.equal(model(x), reference(x))
    assert mask_from_pruned(_mlp()) == {}


def test_a_mask_that_does_not_fit_leaves_the_module_unpruned():
    model = _mlp()
    bad = _random_mask(model)
    bad["3.weight"] = bad["3.weight"][:, :50]
    with pytest.raises(UserError, match=r"'3.weight' has shape \(100, 50\), parameter has \(100, 100\)"):
        apply_mask(model, bad)
    with pytest.raises(UserError, match="'7.weight' is not a parameter"):
        apply_mask(model, {"1.weight": bad["1.weight"], "7.weight": bad["1.weight"]})
    assert not prune.is_pruned(model)  # checked before the first custom_from_mask


def test_state_dict_with_orig_and_mask_keys_gives_the_same_weights_and_mask():
    model = _mlp()
    prune.l1_unstructured(model[1], "weight", amount=0.7)
    prune.random_unstructured(model[3], "weight", amount=0.5)
    prune.l1_unstructured(model[3], "weight", amount=0.2)  # pruned twice: a PruningContainer
    state = model.state_dict()
    assert "1.weight_orig" in state and "3.weight_mask" in state

    plain, mask = mask_from_state_dict(state)
    assert set(mask) == {"1.weight", "3.weight"}
    assert all(torch.equal(mask[k], mask_from_pruned(model)[k]) for k in mask)
    fresh = _mlp(seed=5)
    fresh.load_state_dict(plain)  # strict: exactly the unpruned module's keys
    assert torch.equal(fresh[1].weight, model[1].weight) and torch.equal(fresh[3].weight, model[3].weight)
    assert torch.equal(fresh[5].weight, model[5].weight) and torch.equal(fresh[1].bias, model[1].bias)
    unmasked, _ = mask_from_state_dict(state, masked=False)
    assert torch.equal(unmasked["1.weight"], model[1].weight_orig)

    with pytest.raises(UserError, match="has '1.weight_orig' but no '1.weight_mask'"):
        mask_from_state_dict({k: v for k, v in state.items() if k != "1.weight_mask"})


def _checkpoint(masked_weights: str) -> dict:
    """A toolkit checkpoint of the MNIST-1D MLP whose weights are nonzero everywhere (as RISE's are,
    frozen outside the mask) unless ``masked_weights`` is ``"zero"``."""
    model = _mlp()
    mask = _random_mask(model)
    if masked_weights == "zero":
        toolkit.apply_mask(model, mask)
    return make_checkpoint(model, model_name="mnist1d_mlp", num_classes=10, input_shape=(1, 40), seed=0,
                           dataset=DatasetHparams(), mask=mask, iteration=0, iterations_per_epoch=1,
                           meta={"masked_weights": masked_weights})


def test_export_with_remove_gives_exact_zeros_and_plain_keys():
    ckpt = _checkpoint("frozen")
    stored, mask = export_ticket(ckpt)
    assert all(torch.equal(stored[k], ckpt["state_dict"][k]) for k in ckpt["state_dict"])
    assert bool((stored["1.weight"][~mask["1.weight"]] != 0).all())  # frozen values kept

    removed, mask2 = export_ticket(ckpt, remove=True)
    assert set(removed) == set(ckpt["state_dict"]) and not any(k.endswith(("_orig", "_mask")) for k in removed)
    for name, keep in mask2.items():
        assert torch.equal(keep, ckpt["mask"][name])
        assert bool((removed[name][~keep] == 0).all()) and torch.equal(removed[name][keep], stored[name][keep])
    _mlp(seed=3).load_state_dict(removed)

    as_pruned = pruned_model(ckpt).state_dict()  # the other direction: torch's pruned keys, read back
    plain, back = mask_from_state_dict(as_pruned)
    assert all(torch.equal(back[k], ckpt["mask"][k]) for k in ckpt["mask"])
    assert all(torch.equal(plain[k], removed[k]) for k in removed)
    assert export_ticket(_checkpoint("zero"), remove=True)[1].keys() == ckpt["mask"].keys()


# --- open_lth ------------------------------------------------------------------------------------


class OpenLthLeNet(nn.Module):
    """open_lth's ``mnist_lenet_N1_N2`` (models/mnist_lenet.py), here on MNIST-1D's 40 inputs."""

    def __init__(self, plan=(100, 100), inputs: int = 40, outputs: int = 10):
        super().__init__()
        sizes = [inputs, *plan]
        self.fc_layers = nn.ModuleList(nn.Linear(a, b) for a, b in zip(sizes, sizes[1:]))
        self.fc = nn.Linear(sizes[-1], outputs)

    def forward(self, x):
        x = x.view(x.size(0), -1)
        for layer in self.fc_layers:
            x = torch.relu(layer(x))
        return self.fc(x)


@pytest.fixture
def open_lth_level(tmp_path):
    """A level folder as open_lth writes it: ``mask.pth`` ({name: int 0/1 tensor}, output layer
    dense as in its LeNet default) and the level's starting weights ``model_ep0_it0.pth``, masked."""
    torch.manual_seed(7)
    net = OpenLthLeNet()
    mask = {name: (p.abs() > p.abs().flatten().kthvalue(int(0.6 * p.numel())).values).int()
            for name, p in net.named_parameters() if name.endswith("weight")}
    mask["fc.weight"] = torch.ones_like(mask["fc.weight"])
    with torch.no_grad():
        for name, p in net.named_parameters():
            if name in mask:
                p.mul_(mask[name])
    folder = tmp_path / "level_2" / "main"
    folder.mkdir(parents=True)
    torch.save(mask, folder / "mask.pth")
    torch.save(net.state_dict(), folder / "model_ep0_it0.pth")
    return folder, net, mask


def test_open_lth_mask_imports_and_the_hessian_reads_it(open_lth_level, tmp_path, data_dir, capsys):
    folder, net, mask = open_lth_level
    out = tmp_path / "imported"
    assert main(["import-mask", str(folder / "mask.pth"), "--model", "mnist1d_mlp", "--name-map", "open_lth",
                 "--init", str(folder / "model_ep0_it0.pth"), "--mnist1d-samples", "500", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "model mnist1d_mlp on mnist1d" in printed and f"wrote {out / 'init.pt'}" in printed

    loaded = load(out / "init.pt", data_dir=data_dir)
    renamed = {"fc_layers.0.weight": "1.weight", "fc_layers.1.weight": "3.weight", "fc.weight": "5.weight"}
    assert {renamed[k] for k in mask} == set(loaded.mask)
    assert all(torch.equal(loaded.mask[renamed[k]], mask[k].bool()) for k in mask)
    x = loaded.dataset.test.x[:32]
    with torch.no_grad():
        assert torch.equal(loaded.model(x), net(x))  # the same network, under the toolkit's names
    meta = loaded.checkpoint["meta"]
    assert meta["algorithm"] == "import-mask" and meta["kind"] == "init" and len(meta["run_hash"]) == 12
    assert not (out / "final.pt").exists()

    from analysis.hessian import main as hessian

    assert hessian([str(out / "init.pt"), "--space", "ticket", "--top-k", "1", "--eig-steps", "3", "--samples", "100",
                    "--no-progress",
                    "--out", str(tmp_path / "h")]) == 0
    result = json.loads((tmp_path / "h" / "hessian.json").read_text())["results"][0]
    kept = sum(int(m.sum()) for m in mask.values())
    assert result["dim"] == kept + 100 + 100 + 10  # the ticket's coordinates: kept weights and the biases
    assert result["weight_density"] == pytest.approx(kept / sum(m.numel() for m in mask.values()))
    assert result["label"].startswith(f"import-mask-{meta['run_hash'][:6]} L0 init") and result["dataset"] == "mnist1d"


def test_import_without_weights_uses_the_seeded_init_and_removes_stale_files(open_lth_level, tmp_path, capsys):
    folder, _, mask = open_lth_level
    out = tmp_path / "imported"
    out.mkdir()
    (out / "final.pt").write_bytes(b"an earlier import's trained network")
    argv = ["import-mask", str(folder / "mask.pth"), "--model", "mnist1d_mlp",
            "--name-map", "fc_layers.0=1,fc_layers.1=3,fc=5", "--seed", "4", "--out", str(out)]
    assert main(argv) == 0
    assert "toolkit's initialisation of mnist1d_mlp from seed 4" in capsys.readouterr().out
    assert not (out / "final.pt").exists()
    ckpt = read_checkpoint(out / "init.pt")
    expected = build_model("mnist1d_mlp", 10, (1, 40), 4).state_dict()
    keep = ckpt["mask"]["3.weight"]
    assert torch.equal(ckpt["state_dict"]["3.weight"][keep], expected["3.weight"][keep])
    assert bool((ckpt["state_dict"]["3.weight"][~keep] == 0).all())
    assert torch.equal(read_mask_file(out / "mask.pt")["1.weight"], mask["fc_layers.0.weight"].bool())


def test_a_torch_prune_state_dict_is_a_mask_file_too(tmp_path, capsys):
    model = _mlp()
    prune.l1_unstructured(model[3], "weight", amount=0.9)
    torch.save(model.state_dict(), tmp_path / "pruned.pt")
    assert main(["import-mask", str(tmp_path / "pruned.pt"), "--model", "mnist1d_mlp",
                 "--weights", str(tmp_path / "pruned.pt"), "--out", str(tmp_path / "o")]) == 0
    ckpt = read_checkpoint(tmp_path / "o" / "final.pt")
    assert torch.equal(ckpt["mask"]["3.weight"], model[3].weight_mask.bool())
    assert bool(ckpt["mask"]["1.weight"].all())  # layers the file does not prune are kept dense
    assert torch.equal(ckpt["state_dict"]["3.weight"], model[3].weight)
    assert not (tmp_path / "o" / "init.pt").exists()  # a foreign trained network has no W^0 of ours


class NotATensor:
    pass


def _one_line(capsys, text: str) -> str:
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1 and text in err, err
    return err


@pytest.mark.parametrize("case, text", [
    ("wrong-shape", "'fc_layers.1.weight' (mapped to '3.weight') has shape 100x50, the model's 100x100"),
    ("unknown-name", "'fc_layers.0.weight' is not a parameter of the model"),
    ("bias", "'fc_layers.0.bias' (mapped to '1.bias') is not a linear or convolution weight"),
    ("not-binary", "mask entry 'fc.weight' holds values other than 0 and 1"),
    ("missing-file", "mask file {tmp}/nope.pth does not exist"),
    ("text-file", "it seems to be a text file"),
    ("not-weights-only", "holds pickled objects that are not plain tensors or values"),
    ("not-a-dict", "expected a dict from parameter name to tensor"),
    ("bad-map", "--name-map entry 'fc_layers.0' is not SOURCE=TARGET"),
    ("unused-map", "--name-map source 'layers.9' names no entry"),
    ("conv-open-lth", "model 'mnist1d_cnn' has convolutions"),
    ("wrong-dataset", "does not fit model 'mnist1d_mlp' on mnist"),
    ("weights-missing", "--init {tmp}/w.pth does not fit model 'mnist1d_mlp' on mnist1d: missing '5.bias'"),
    ("weights-shape", "--init {tmp}/w.pth does not fit model 'mnist1d_mlp' on mnist1d: 'fc_layers.1.weight' "
                      "(mapped to '3.weight') has shape 100x50, the model's 100x100"),
    ("unwritable-out", "--out /proc/nope/x cannot be created"),
    ("out-is-a-file", "is a file, not a folder"),
])
def test_bad_input_is_one_line_before_anything_is_written(case, text, open_lth_level, tmp_path, capsys):
    folder, net, mask = open_lth_level
    path = folder / "mask.pth"
    out = tmp_path / "out"
    flags = ["--model", "mnist1d_mlp", "--name-map", "open_lth"]
    if case == "wrong-shape":
        torch.save({**mask, "fc_layers.1.weight": mask["fc_layers.1.weight"][:, :50]}, path)
    elif case == "unknown-name":
        flags = ["--model", "mnist1d_mlp"]
    elif case == "bias":
        torch.save({**mask, "fc_layers.0.bias": torch.ones(100, dtype=torch.int)}, path)
    elif case == "not-binary":
        torch.save({**mask, "fc.weight": mask["fc.weight"] * 2}, path)
    elif case == "missing-file":
        path = tmp_path / "nope.pth"
    elif case == "text-file":
        path.write_text("fc.weight 1 0 1\n")
    elif case == "not-weights-only":
        torch.save({"fc.weight": mask["fc.weight"], "why": NotATensor()}, path)
    elif case == "not-a-dict":
        torch.save([mask["fc.weight"]], path)
    elif case == "bad-map":
        flags = ["--model", "mnist1d_mlp", "--name-map", "fc_layers.0"]
    elif case == "unused-map":
        flags = ["--model", "mnist1d_mlp", "--name-map", "fc_layers.0=1,fc_layers.1=3,fc=5,layers.9=7"]
    elif case == "conv-open-lth":
        flags = ["--model", "mnist1d_cnn", "--name-map", "open_lth"]
    elif case == "wrong-dataset":
        flags += ["--dataset", "mnist"]
    elif case == "weights-missing":
        state = net.state_dict()
        del state["fc.bias"]
        torch.save(state, tmp_path / "w.pth")
        flags += ["--init", str(tmp_path / "w.pth")]
    elif case == "weights-shape":
        state = net.state_dict()
        state["fc_layers.1.weight"] = state["fc_layers.1.weight"][:, :50]
        torch.save(state, tmp_path / "w.pth")
        flags += ["--init", str(tmp_path / "w.pth")]
    elif case == "unwritable-out":
        out = Path("/proc/nope/x")
    elif case == "out-is-a-file":
        out.write_text("not a folder")
    assert main(["import-mask", str(path), *flags, "--out", str(out)]) == 2
    _one_line(capsys, text.format(tmp=tmp_path))
    assert case == "out-is-a-file" or not out.exists() or not any(out.iterdir())


def test_the_command_is_registered_and_not_sweepable():
    from training import commands

    found = commands.find("import-mask")
    assert not found.sweepable and not found.resumable


@pytest.fixture
def open_lth_mnist_lenet(tmp_path):
    """open_lth's default ``mnist_lenet_300_100`` (784 inputs): a level's ``mask.pth`` and its W^0."""
    torch.manual_seed(3)
    net = OpenLthLeNet(plan=(300, 100), inputs=784)
    mask = {name: (torch.rand_like(p) < 0.5).int() for name, p in net.named_parameters() if name.endswith("weight")}
    folder = tmp_path / "open_lth_data" / "lottery_X" / "replicate_1" / "level_3" / "main"
    folder.mkdir(parents=True)
    torch.save(mask, folder / "mask.pth")
    torch.save(net.state_dict(), folder / "model_ep0_it0.pth")
    torch.save(net.state_dict(), folder / "model_ep40_it0.pth")
    return folder, mask


def test_the_help_example_runs_as_written(open_lth_mnist_lenet, tmp_path, capsys):
    """The open_lth command of ``import-mask --help``, with only its paths pointed at a level folder,
    imports open_lth's 784-input LeNet (it needs ``--dataset mnist``; no MNIST files are read)."""
    import shlex

    from training import commands

    folder, mask = open_lth_mnist_lenet
    epilog = commands.find("import-mask").epilog.replace("\\\n", " ")
    line = next(x.strip() for x in epilog.splitlines() if x.strip().startswith("python -m training import-mask"))
    argv = shlex.split(line)[3:]
    paths = {"mask.pth": folder / "mask.pth", "model_ep0_it0.pth": folder / "model_ep0_it0.pth",
             "model_ep40_it0.pth": folder / "model_ep40_it0.pth", "imported": tmp_path / "imported"}
    argv = [next((str(p) for end, p in paths.items() if a.endswith(end)), a) for a in argv]
    assert main(argv) == 0, capsys.readouterr().err
    assert "model lenet_300_100 on mnist" in capsys.readouterr().out
    ckpt = read_checkpoint(tmp_path / "imported" / "final.pt")
    assert torch.equal(ckpt["mask"]["1.weight"], mask["fc_layers.0.weight"].bool())
    assert ckpt["dataset"]["name"] == "mnist"


def test_a_mask_for_another_input_size_names_the_file_key_and_the_dataset(open_lth_mnist_lenet, tmp_path, capsys):
    folder, _ = open_lth_mnist_lenet
    assert main(["import-mask", str(folder / "mask.pth"), "--model", "lenet_300_100", "--name-map", "open_lth",
                 "--out", str(tmp_path / "o")]) == 2
    _one_line(capsys, "does not fit model 'lenet_300_100' on mnist1d: 'fc_layers.0.weight' (mapped to '1.weight') "
                      "has shape 300x784, the model's 300x40")


def test_dataset_help_lists_every_registered_dataset(capsys):
    from training.data import DATASET_SPECS

    with pytest.raises(SystemExit):
        main(["import-mask", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    for name, spec in DATASET_SPECS.items():
        assert f"{name} ({'x'.join(map(str, spec.shape))}, {spec.classes} classes)" in text
    assert "imagenet (3x224x224, 1000 classes)" in text
