#!/usr/bin/env python3
"""Real photos for visual search, taken from a package that ships them: scikit-image's
sample images (`skimage/data/` in its wheel). The wheel is downloaded without installing it
(no dependencies) and only the photos are extracted into data/photos/, with a catalog.jsonl
that `ferrite build-index --catalog` reads (item id, image path, category, in-stock, price).

Stdlib only; safe to run again (does nothing when every photo is already there).

    .venv/bin/python scripts/fetch_photos.py [--out data/photos]
"""

import argparse
import hashlib
import json
import pathlib
import subprocess
import sys
import zipfile

WHEEL = "scikit-image==0.24.0"

# (file in skimage/data, item id, category, in stock, price). Categories and prices are made
# up for the demo catalogue; the photos are real.
PHOTOS = [
    ("astronaut.png", "photo-astronaut", "posters", True, 24.99),
    ("brick.png", "photo-brick", "home", True, 3.49),
    ("camera.png", "photo-camera", "electronics", True, 189.00),
    ("chelsea.png", "photo-chelsea", "pets", True, 12.99),
    ("coffee.png", "photo-coffee", "kitchen", True, 6.50),
    ("coins.png", "photo-coins", "collectibles", False, 45.00),
    ("color.png", "photo-color", "art", True, 9.99),
    ("grass.png", "photo-grass", "garden", True, 14.99),
    ("gravel.png", "photo-gravel", "garden", True, 7.99),
    ("hubble_deep_field.jpg", "photo-hubble", "posters", True, 19.99),
    ("ihc.png", "photo-ihc", "lab", False, 99.00),
    ("logo.png", "photo-logo", "art", True, 4.99),
    ("moon.png", "photo-moon", "posters", True, 15.99),
    ("motorcycle_left.png", "photo-motorcycle-left", "vehicles", True, 8999.00),
    ("motorcycle_right.png", "photo-motorcycle-right", "vehicles", False, 8999.00),
    ("page.png", "photo-page", "books", True, 11.99),
    ("retina.jpg", "photo-retina", "lab", True, 59.00),
    ("rocket.jpg", "photo-rocket", "toys", True, 29.99),
    ("text.png", "photo-text", "books", True, 9.49),
    ("cell.png", "photo-cell", "lab", True, 39.00),
    ("clock_motion.png", "photo-clock", "home", True, 21.00),
    ("horse.png", "photo-horse", "art", True, 17.50),
    ("microaneurysms.png", "photo-microaneurysms", "lab", False, 49.00),
    ("phantom.png", "photo-phantom", "lab", True, 5.00),
]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    root = pathlib.Path(__file__).resolve().parent.parent
    ap.add_argument("--out", type=pathlib.Path, default=root / "data" / "photos")
    ap.add_argument("--wheels", type=pathlib.Path, default=root / ".whl")
    args = ap.parse_args()
    out: pathlib.Path = args.out
    catalog = out / "catalog.jsonl"
    if catalog.exists() and all((out / f).exists() for f, *_ in PHOTOS):
        return 0
    args.wheels.mkdir(parents=True, exist_ok=True)
    wheels = sorted(args.wheels.glob("scikit_image-0.24.0-*.whl"))
    if not wheels:
        subprocess.run(
            [sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--only-binary=:all:",
             "-d", str(args.wheels), WHEEL],
            check=True,
        )
        wheels = sorted(args.wheels.glob("scikit_image-0.24.0-*.whl"))
    if not wheels:
        sys.exit(f"no {WHEEL} wheel in {args.wheels} after pip download")
    out.mkdir(parents=True, exist_ok=True)
    rows = []
    with zipfile.ZipFile(wheels[0]) as wheel:
        for name, item_id, category, in_stock, price in PHOTOS:
            data = wheel.read(f"skimage/data/{name}")
            (out / name).write_bytes(data)
            rows.append({
                "item_id": item_id,
                "image_path": name,
                "category": category,
                "in_stock": in_stock,
                "price": price,
                "sha256": hashlib.sha256(data).hexdigest(),
            })
    tmp = catalog.with_suffix(".jsonl.tmp")
    tmp.write_text("".join(json.dumps(r) + "\n" for r in rows))
    tmp.replace(catalog)
    print(f"{len(rows)} photos in {out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
