"""ze.visualize.features_pca: the PnP paper's PCA pictures of decoder features and self-attention."""
import numpy as np
import pytest

import zeroedit as ze
from zeroedit.errors import ParameterError

from conftest import make_image, processors_snapshot


def test_features_pca_picture(tiny_pipe, tmp_path):
    before = processors_snapshot(tiny_pipe)
    out = tmp_path / "pca.png"
    picture = ze.visualize.features_pca(tiny_pipe, make_image(0), step=0, steps=5, out=str(out))
    assert out.exists() and picture.size == (128, 128)
    assert len(np.unique(np.asarray(picture).reshape(-1, 3), axis=0)) > 4  # a real picture, not a flat colour
    assert processors_snapshot(tiny_pipe) == before


def test_features_pca_of_self_attention(tiny_pipe, tmp_path):
    attention = ze.visualize.features_pca(tiny_pipe, make_image(0), step=2, steps=5, what="q",
                                          out=str(tmp_path / "q.png"))
    assert attention.size == (128, 128) and (tmp_path / "q.png").exists()


def test_features_pca_is_deterministic(tiny_pipe):
    a = ze.visualize.features_pca(tiny_pipe, make_image(1), step=1, steps=3)
    b = ze.visualize.features_pca(tiny_pipe, make_image(1), step=1, steps=3)
    assert np.array_equal(np.asarray(a), np.asarray(b))


@pytest.mark.parametrize("kwargs", [dict(step=5), dict(step=-1), dict(what="v"), dict(steps=0)])
def test_features_pca_bad_input(tiny_pipe, kwargs):
    with pytest.raises(ParameterError):
        ze.visualize.features_pca(tiny_pipe, make_image(0), **(dict(steps=5) | kwargs))


def test_features_pca_inverts_at_the_working_size_and_returns_the_input_size(tiny_pipe):
    """A 517×389 image: the inversion runs at the methods' working size (images.working_size; what translate
    inverts), not at the upload's own size; the callback sees every inversion step; the picture comes back at
    517×389."""
    from zeroedit.backbones import Backbone
    from zeroedit.images import working_size
    backbone = Backbone(tiny_pipe)
    width, height = working_size((517, 389), backbone.native_size, backbone.size_multiple)
    seen = []
    picture = ze.visualize.features_pca(tiny_pipe, make_image(2, (517, 389)), steps=3,
                                        callback=lambda i, t, x: seen.append((i, tuple(x.shape[-2:]))))
    assert picture.size == (517, 389)
    assert [i for i, _ in seen] == [0, 1, 2]
    assert {shape for _, shape in seen} == {(height // backbone.vae_scale, width // backbone.vae_scale)}
    assert (width, height) != (512, 384)  # not the upload's size rounded to 64 (what it used to invert at)
