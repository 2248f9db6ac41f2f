"""A stand-in for the ``gftp`` helper yapapi starts for every job (test-only).

yapapi talks JSON-RPC, one message per line, with ``gftp server`` over its
stdin and stdout. This stand-in answers the version query and shutdown, and
pretends to publish files, which is all a job does before a provider shows up.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path


def _answer(method: str, params: dict[str, object]) -> object:
    if method == "version":
        return "0.7.3 (sovrfs test stand-in)"
    if method == "publish":
        files = params.get("files")
        assert isinstance(files, list)
        return [{"file": f, "url": f"gftp://stand-in/{Path(str(f)).name}"} for f in files]
    if method == "receive":
        return {"file": params.get("output_file"), "url": "gftp://stand-in/receive"}
    if method in ("close", "upload", "shutdown"):
        return "Ok"
    raise LookupError(method)


def main() -> int:
    if sys.argv[1:2] == ["--version"]:
        print("gftp 0.7.3 (sovrfs test stand-in)")
        return 0
    for line in sys.stdin:
        if not line.strip():
            continue
        request = json.loads(line)
        reply: dict[str, object] = {"jsonrpc": "2.0", "id": request.get("id")}
        try:
            reply["result"] = _answer(request["method"], request.get("params") or {})
        except LookupError:
            reply["error"] = {"code": -32601, "message": "method not found"}
        sys.stdout.write(json.dumps(reply) + "\n")
        sys.stdout.flush()
        if request["method"] == "shutdown":
            break
    return 0


if __name__ == "__main__":
    sys.exit(main())


def install(bin_dir: Path, python: str) -> Path:
    """Write an executable ``gftp`` into ``bin_dir`` that runs this stand-in."""
    bin_dir.mkdir(parents=True, exist_ok=True)
    exe = bin_dir / "gftp"
    exe.write_text(f'#!/bin/sh\nexec "{python}" "{Path(__file__).resolve()}" "$@"\n')
    exe.chmod(0o755)
    return exe
