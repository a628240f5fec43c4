"""Transformer-style blocks (attention and MLP branches added in turn onto one stream, with
stochastic depth and layer scale inside the branches) are removable blocks, with exact MACs;
a fixed input size (ViT) leaves the resolution axis at its base; width pruning leaves whole
the channel groups that reach a parameter outside any layer (a ViT's class token)."""

import pytest
import torch
from torchvision.models.swin_transformer import SwinTransformer
from torchvision.models.vision_transformer import VisionTransformer

import dwrprune
from dwrprune.cost import count_macs


def _vit():
    torch.manual_seed(0)
    return VisionTransformer(image_size=32, patch_size=8, num_layers=3, num_heads=2,
                             hidden_dim=16, mlp_dim=32, num_classes=10).eval()


def _swin():
    torch.manual_seed(0)
    return SwinTransformer(patch_size=[4, 4], embed_dim=16, depths=[2, 2], num_heads=[2, 4],
                           window_size=[4, 4], stochastic_depth_prob=0.1,
                           num_classes=10).eval()


@pytest.mark.parametrize("make,blocks", [(_vit, 3), (_swin, 4)])
def test_transformer_blocks_are_found_and_removed_with_exact_macs(make, blocks):
    shr = dwrprune.Shrinker(make(), resolution=32, in_channels=3)
    assert len(shr.blocks) == blocks and {b.kind for b in shr.blocks} == {"residual"}
    for d in (2 / 3, 1 / 3) if blocks == 3 else (0.75, 0.5):
        out = shr.shrink(d, 1.0, 1.0)
        assert len(out.spec["arch"]["removed_blocks"]) == round((1 - d) * blocks)
        assert shr.macs(d, 1.0, 1.0) == count_macs(out.model, 32, 3)  # flop_counter's count
        assert out.model(torch.randn(2, 3, 32, 32)).shape == (2, 10)
    assert shr.macs(0.5 if blocks == 4 else 1 / 3, 1, 1) < shr.macs(1, 1, 1)


def test_removing_a_transformer_block_is_the_identity_on_its_stream():
    """A block whose branches add zero (the last linear of attention and MLP zeroed) is
    removed with unchanged outputs."""
    model = _vit()
    layer = model.encoder.layers.encoder_layer_1
    with torch.no_grad():
        layer.self_attention.out_proj.weight.zero_()
        layer.self_attention.out_proj.bias.zero_()
        layer.mlp[3].weight.zero_()
        layer.mlp[3].bias.zero_()
    x = torch.randn(2, 3, 32, 32)
    ref = model(x)
    shr = dwrprune.Shrinker(model, resolution=32, in_channels=3,
                            blocks=["encoder.layers.encoder_layer_1"])
    out = shr.shrink(0.4, 1.0, 1.0)  # of one named block, none kept
    assert [b["name"] for b in out.spec["arch"]["removed_blocks"]] == [
        "encoder.layers.encoder_layer_1"]
    torch.testing.assert_close(out.model(x), ref, atol=1e-5, rtol=1e-5)


def test_vit_fixed_input_size_and_width_on_the_mlp_groups_only():
    shr = dwrprune.Shrinker(_vit(), resolution=32, in_channels=3)
    assert shr.min_resolution == shr.base_resolution == 32  # ViT asserts its image size
    with pytest.warns(UserWarning, match="class token"):
        out = shr.shrink(1.0, 0.5, 1.0)
    m = out.model
    assert m.encoder.layers.encoder_layer_0.mlp[0].out_features == 16  # MLP hidden halved
    assert m.hidden_dim == 16 and m.class_token.shape[-1] == 16  # the stream stays whole
    assert shr.macs(1.0, 0.5, 1.0) == count_macs(m, 32, 3)
    assert m(torch.randn(1, 3, 32, 32)).shape == (1, 10)
