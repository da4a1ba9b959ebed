"""Request-body encoding: orjson (ours, :func:`imageworks_core.jsonbody.encode_body`) vs
``json.dumps(...).encode()`` (the peer) on a realistic chat body, in the same run: a data: URL
with the base64 of a 1-MP JPEG plus a prompt.

    .venv/bin/python bench/bench_json_body.py [--repeat 300]
"""

from __future__ import annotations

import argparse
import base64
import io
import json
import timeit

from PIL import Image

from imageworks_core.jsonbody import encode_body


def body() -> dict:
    # A photo-like entropy: a gradient under noise (a flat test image compresses to nothing).
    image = Image.merge("RGB", [Image.effect_noise((1024, 1024), 24 + 8 * i) for i in range(3)])
    buf = io.BytesIO()
    image.save(buf, "JPEG", quality=90)
    url = "data:image/jpeg;base64," + base64.b64encode(buf.getvalue()).decode("ascii")
    return {
        "model": "Qwen/Qwen2.5-VL-7B-Instruct",
        "messages": [
            {
                "role": "user",
                "content": [
                    {"type": "text", "text": "Describe the colours of this photograph — précisément."},
                    {"type": "image_url", "image_url": {"url": url}},
                ],
            }
        ],
        "max_tokens": 256,
        "temperature": 0.2,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=300)
    args = parser.parse_args()
    obj = body()
    assert json.loads(encode_body(obj)) == json.loads(json.dumps(obj))
    size = len(encode_body(obj))
    peer = min(timeit.repeat(lambda: json.dumps(obj).encode(), number=args.repeat, repeat=3)) / args.repeat
    ours = min(timeit.repeat(lambda: encode_body(obj), number=args.repeat, repeat=3)) / args.repeat
    print(f"body {size / 1e3:.0f} KB (1-MP JPEG as a data: URL)")
    print(f"json.dumps().encode()  {peer * 1e6:8.1f} us/request")
    print(f"encode_body (orjson)   {ours * 1e6:8.1f} us/request")
    print(f"ratio: {peer / ours:.1f}x")


if __name__ == "__main__":
    main()
