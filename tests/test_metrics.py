"""PSNR / SSIM / LPIPS and masked variants against analytic values and direct formulas."""

from __future__ import annotations

import math

import pytest
import torch

from monodyn_cli import metrics as M

C1, C2 = 0.01 ** 2, 0.03 ** 2


def rand_images(*shape, seed=0):
    return torch.rand(*shape, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("e", [0.5, 0.1, 0.01])
def test_psnr_constant_error(e):
    gt = torch.full((2, 16, 20, 3), 0.25)
    assert M.psnr(gt + e, gt).tolist() == pytest.approx([-10 * math.log10(e ** 2)] * 2, abs=1e-4)


def test_psnr_masked_counts_only_mask_pixels():
    gt = torch.zeros(1, 10, 10, 3)
    pred = gt.clone()
    pred[0, :, :5] = 0.1   # error 0.1 on the left half
    pred[0, :, 5:] = 0.9   # large error on the right half
    mask = torch.zeros(1, 10, 10)
    mask[0, :, :5] = 1
    assert float(M.psnr(pred, gt, mask)[0]) == pytest.approx(20.0, abs=1e-4)
    assert float(M.psnr(pred, gt)[0]) < 5
    assert math.isnan(float(M.psnr(pred, gt, torch.zeros(1, 10, 10))[0]))
    assert math.isinf(float(M.psnr(gt, gt)[0]))


def test_ssim_identical_is_one():
    x = rand_images(3, 24, 30, 3)
    torch.testing.assert_close(M.ssim(x, x), torch.ones(3))
    torch.testing.assert_close(M.ssim_map(x, x), torch.ones(3, 14, 20))


def test_ssim_constant_images_analytic():
    """Constant images have zero variance, so SSIM = (2ab + C1) / (a^2 + b^2 + C1)."""
    a, b = 0.3, 0.7
    x, y = torch.full((1, 16, 16, 3), a), torch.full((1, 16, 16, 3), b)
    expected = (2 * a * b + C1) / (a * a + b * b + C1)
    assert float(M.ssim(x, y)[0]) == pytest.approx(expected, rel=1e-5)


def test_ssim_matches_direct_windowed_formula():
    """One window position computed directly with the 2D Gaussian weights (no separable convolution)."""
    x, y = rand_images(1, 20, 23, 3, seed=1), rand_images(1, 20, 23, 3, seed=2) * 0.5 + 0.2
    smap = M.ssim_map(x, y)
    assert smap.shape == (1, 10, 13)
    g = M.gaussian_window()
    w = (g[:, None] * g[None, :])[..., None]  # (11, 11, 1)
    for r, c in [(0, 0), (4, 7), (9, 12)]:
        px, py = x[0, r:r + 11, c:c + 11].double(), y[0, r:r + 11, c:c + 11].double()
        mx, my = (w * px).sum((0, 1)), (w * py).sum((0, 1))
        vx = (w * (px - mx) ** 2).sum((0, 1))
        vy = (w * (py - my) ** 2).sum((0, 1))
        cov = (w * (px - mx) * (py - my)).sum((0, 1))
        s = ((2 * mx * my + C1) * (2 * cov + C2) / ((mx ** 2 + my ** 2 + C1) * (vx + vy + C2))).mean()
        assert float(smap[0, r, c]) == pytest.approx(float(s), abs=1e-5)


def test_ssim_masked_average_is_map_mean_over_mask():
    x, y = rand_images(1, 30, 30, 3, seed=3), rand_images(1, 30, 30, 3, seed=4)
    mask = torch.zeros(1, 30, 30)
    mask[0, 5:15, 5:25] = 1
    smap = M.ssim_map(x, y)[0]
    expected = smap[0:10, 0:20].mean()  # mask cropped by the window radius 5
    assert float(M.ssim(x, y, mask)[0]) == pytest.approx(float(expected), rel=1e-5)
    torch.testing.assert_close(M.ssim(x, y, torch.ones(1, 30, 30)), M.ssim(x, y))


def test_ssim_partial_ignores_pixels_outside_mask():
    x, y = rand_images(1, 30, 30, 3, seed=5), rand_images(1, 30, 30, 3, seed=6)
    mask = torch.zeros(1, 30, 30)
    mask[0, :, :18] = 1
    y2 = y.clone()
    y2[0, :, 18:] = rand_images(30, 12, 3, seed=7)
    a = M.ssim(x, y, mask, mask_mode="partial")
    torch.testing.assert_close(a, M.ssim(x, y2, mask, mask_mode="partial"))
    assert float(a[0]) != pytest.approx(float(M.ssim(x, y)[0]), abs=1e-3)
    torch.testing.assert_close(M.ssim(x, y, torch.ones(1, 30, 30), mask_mode="partial"), M.ssim(x, y))


def test_shape_errors():
    from models.errors import InputError

    with pytest.raises(InputError):
        M.psnr(torch.zeros(1, 8, 8, 3), torch.zeros(1, 8, 9, 3))
    with pytest.raises(InputError, match="at least 11x11"):
        M.ssim(torch.zeros(1, 8, 8, 3), torch.zeros(1, 8, 8, 3))


def tiny_lpips_files(tmp_path, net="alex", seed=0):
    """Random weights saved in the official formats: LPIPS `linK.model.1.weight`, torchvision `features.N.*`."""
    torch.manual_seed(seed)
    ref = M.LPIPS(net)
    lin_state = {f"lin{k}.model.1.weight": lin[1].weight.abs().clone() for k, lin in enumerate(ref.lins)}
    bb_state = {f"features.{k}": v.clone() for k, v in ref.features.state_dict().items()}
    bb_state["classifier.1.weight"] = torch.zeros(4, 4)  # torchvision files carry the classifier too
    torch.save(lin_state, tmp_path / f"{net}-lin.pth")
    torch.save(bb_state, tmp_path / f"{net}-backbone.pth")
    return tmp_path / f"{net}-lin.pth", tmp_path / f"{net}-backbone.pth"


@pytest.mark.parametrize("net", ["alex", "vgg"])
def test_lpips_loads_official_format_and_is_zero_for_identical(tmp_path, net):
    lin, bb = tiny_lpips_files(tmp_path, net)
    model = M.load_lpips(net, lin, bb)
    x, y = rand_images(2, 64, 64, 3, seed=1), rand_images(2, 64, 64, 3, seed=2)
    same = M.lpips(model, x, x)
    torch.testing.assert_close(same, torch.zeros(2), atol=1e-6, rtol=0)
    d = M.lpips(model, x, y)
    assert (d > 1e-4).all()
    torch.testing.assert_close(M.lpips(model, x, y, batch_size=1), d)  # batching does not change the result
    torch.testing.assert_close(M.lpips(model, y, x), d, atol=1e-6, rtol=1e-5)  # symmetric


def test_lpips_masked_ignores_outside_and_missing_weights_message(tmp_path, monkeypatch):
    lin, bb = tiny_lpips_files(tmp_path)
    model = M.load_lpips("alex", lin, bb)
    x, y = rand_images(1, 64, 64, 3, seed=3), rand_images(1, 64, 64, 3, seed=4)
    mask = torch.zeros(1, 64, 64)
    mask[0, 10:50, 5:40] = 1
    y2 = torch.where(mask[..., None] > 0, y, rand_images(1, 64, 64, 3, seed=5))
    torch.testing.assert_close(M.lpips(model, x, y, mask), M.lpips(model, x, y2, mask))

    for var in ("MONODYN_LPIPS_ALEX", "MONODYN_ALEXNET"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("MONODYN_CACHE", str(tmp_path / "empty-cache"))
    model, message = M.try_load_lpips("alex")
    assert model is None and message.startswith("LPIPS skipped: ") and "alex" in message


def test_lpips_rejects_mismatched_weights(tmp_path):
    from models.errors import InputError

    lin, _ = tiny_lpips_files(tmp_path, "alex")
    _, vgg_bb = tiny_lpips_files(tmp_path, "vgg")
    with pytest.raises(InputError, match="do not fit"):
        M.load_lpips("alex", lin, vgg_bb)


def test_evaluate_csv_and_summary(tmp_path):
    gt = torch.full((3, 16, 16, 3), 0.5)
    pred = gt.clone()
    pred[0] += 0.1
    pred[1] += 0.01
    mask = torch.ones(3, 16, 16)
    rows = M.evaluate(pred, gt, mask)
    assert [r["frame"] for r in rows] == [0, 1, 2]
    assert rows[0]["psnr"] == pytest.approx(20.0, abs=1e-3) and rows[1]["mpsnr"] == pytest.approx(40.0, abs=1e-3)
    summary = M.summarize(rows)
    assert summary["psnr"] == pytest.approx(30.0, abs=1e-3) and summary["psnr_skipped"] == 1  # frame 2: inf
    assert summary["ssim"] == pytest.approx(sum(r["ssim"] for r in rows) / 3)
    M.write_csv(tmp_path / "m.csv", rows)
    back = M.read_csv(tmp_path / "m.csv")
    assert back[0]["frame"] == 0 and back[1]["psnr"] == pytest.approx(rows[1]["psnr"], abs=1e-5)
    assert (tmp_path / "m.csv").read_text().splitlines()[0] == "frame,psnr,ssim,mpsnr,mssim"


def test_sharpness_ratio_of_gradient_energy():
    gt = rand_images(2, 24, 32, 3)
    assert M.sharpness(gt, gt).tolist() == pytest.approx([1.0, 1.0])
    assert M.sharpness(0.5 * gt, gt).tolist() == pytest.approx([0.25, 0.25], rel=1e-5)  # half the contrast
    blur = torch.nn.functional.avg_pool2d(gt.permute(0, 3, 1, 2), 3, 1, 1, count_include_pad=False).permute(0, 2, 3, 1)
    assert (M.sharpness(blur, gt) < 0.3).all()
    flat = torch.full_like(gt, 0.5)
    assert M.sharpness(flat, gt).tolist() == [0.0, 0.0]
    # masked: only differences inside the mask count (a flat outside does not lower the ratio)
    mask = torch.zeros(2, 24, 32)
    mask[:, :, :16] = 1
    half = torch.where(mask[..., None] > 0, gt, flat)
    assert M.sharpness(half, gt, mask).tolist() == pytest.approx([1.0, 1.0])
    assert math.isnan(M.sharpness(gt, gt, torch.zeros(2, 24, 32))[0])
