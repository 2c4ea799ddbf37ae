"""Tensors of more than 2**24 elements (a real LM's token embedding) on every path that walks
whole tensors: weight fingerprints, checkpoint file fingerprints, the pristine-copy check and
the streaming reader. float32 holds integers exactly only up to 2**24, so an index computed in
it lands past the end of such a tensor; these tensors make that visible."""

from __future__ import annotations

import shutil

import pytest
import torch
from safetensors.torch import save_file

from deadzone.models.checkpoints import _same_sample, files_fingerprint, open_checkpoint
from deadzone.models.fingerprints import (
    parameters_fingerprint,
    rounded_fingerprint,
    sample_indices,
    weights_fingerprint,
)

BIG = 2**24 + 4  # float32 rounds the last index, 2**24 + 3, up to BIG: past the end
ROWS, COLS = 4097, 4096  # a matrix of 2**24 + 4096 elements


def values(numel: int) -> torch.Tensor:
    """0, 1, ..., 250, 0, 1, ...: integers bfloat16 holds exactly, each position's own."""
    return (torch.arange(numel) % 251).to(torch.bfloat16)


class Big(torch.nn.Module):
    def __init__(self, weight: torch.Tensor) -> None:
        super().__init__()
        self.config = None
        self.weight = torch.nn.Parameter(weight, requires_grad=False)


def test_sample_indices_of_a_tensor_past_2_24_end_on_its_last_element():
    index = sample_indices(BIG)
    assert index.dtype == torch.int64 and index[0] == 0 and index[-1] == BIG - 1
    assert bool((index[1:] > index[:-1]).all())
    assert torch.linspace(0, BIG - 1, 16)[-1] == BIG  # what float32 made of it


def test_weight_fingerprints_of_a_tensor_past_2_24_see_its_last_element():
    model = Big(values(BIG))
    first, named = weights_fingerprint(model), parameters_fingerprint(model.named_parameters())
    assert weights_fingerprint(model) == first
    with torch.no_grad():
        model.weight[-1] += 1
    assert weights_fingerprint(model) != first
    assert parameters_fingerprint(model.named_parameters()) != named
    # the same values in float32 and in bfloat16: the same rounded fingerprint, not the same exact
    wide = Big(model.weight.detach().float())
    assert rounded_fingerprint(wide, torch.bfloat16) == rounded_fingerprint(model, torch.bfloat16)
    assert weights_fingerprint(wide) != weights_fingerprint(model)


def test_the_pristine_copy_check_compares_the_last_element_of_a_tensor_past_2_24():
    a, b = Big(values(BIG)), Big(values(BIG))
    assert _same_sample(a, b)
    with torch.no_grad():
        b.weight[-1] += 1
    assert not _same_sample(a, b)


@pytest.fixture(scope="module")
def big_dir(tmp_path_factory):
    """A directory holding one safetensors file: a GPT-2 token embedding of ROWS x COLS."""
    directory = tmp_path_factory.mktemp("big")
    save_file({"transformer.wte.weight": values(ROWS * COLS).reshape(ROWS, COLS)},
              directory / "model.safetensors")  # fmt: skip
    return directory


def test_files_fingerprint_of_a_file_past_2_24_elements_sees_its_first_and_last_bytes(
    big_dir, tmp_path
):
    first = files_fingerprint(big_dir)
    copy = tmp_path / "copy"
    shutil.copytree(big_dir, copy)
    assert files_fingerprint(copy) == first  # the same bytes elsewhere
    file = copy / "model.safetensors"
    header = 8 + int.from_bytes(file.read_bytes()[:8], "little")
    for offset in (header, file.stat().st_size - 1):  # the first and the last byte of the data
        with file.open("r+b") as f:
            f.seek(offset)
            byte = f.read(1)
            f.seek(offset)
            f.write(bytes([byte[0] ^ 0xFF]))
        assert files_fingerprint(copy) != first
        shutil.copyfile(big_dir / "model.safetensors", file)
        assert files_fingerprint(copy) == first


def test_the_streaming_reader_gives_a_matrix_past_2_24_elements_whole(big_dir):
    checkpoint = open_checkpoint(str(big_dir / "model.safetensors"))
    [(site, matrix)] = list(checkpoint.matrices())
    assert site.name == "embed" and site.shape == (ROWS, COLS) == tuple(matrix.shape)
    assert torch.equal(matrix, values(ROWS * COLS).reshape(ROWS, COLS))
    assert matrix[-1, -1] == (ROWS * COLS - 1) % 251
