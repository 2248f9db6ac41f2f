"""A loopback stand-in for the Golem network's outside services (test-only).

yagna asks an Ethereum JSON-RPC node for chain id, blocks and balances before
it grants a budget allocation, and yapapi asks the Golem image registry where a
VM image lives. Offline, both are answered here: every chain gets a large
token and gas balance, and every image query gets a made-up loopback URL.
Nothing is ever sent on chain; a transaction request is answered with an error.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

CHAIN_IDS = {"hoodi": 560048, "holesky": 17000, "sepolia": 11155111, "polygon": 137}
_BALANCE = hex(10**24)  # a million tokens of 18 decimals: always enough
_BALANCE_OF = bytes.fromhex("70a08231")  # ERC-20 balanceOf(address)
_CALL_WITH_DETAILS = bytes.fromhex("863e0a02")  # yagna's wrapper contract


class _Chain:
    def __init__(self) -> None:
        self.calls: list[tuple[str, str]] = []
        self.lock = threading.Lock()

    def answer(self, network: str, method: str, params: list[Any]) -> Any:
        with self.lock:
            self.calls.append((network, method))
        chain_id = CHAIN_IDS.get(network, 1)
        if method == "eth_chainId":
            return hex(chain_id)
        if method == "net_version":
            return str(chain_id)
        if method == "eth_blockNumber":
            return "0x100000"
        if method in ("eth_getBlockByNumber", "eth_getBlockByHash"):
            return _block()
        if method == "eth_getBalance":
            return _BALANCE
        if method == "eth_call":
            data = (params[0] or {}).get("data") or (params[0] or {}).get("input") or ""
            return "0x" + _call(chain_id, bytes.fromhex(data.removeprefix("0x"))).hex()
        if method in ("eth_gasPrice", "eth_maxPriorityFeePerGas"):
            return hex(10**9)
        if method == "eth_getTransactionCount":
            return "0x0"
        if method == "eth_estimateGas":
            return hex(100_000)
        if method == "eth_feeHistory":
            return {
                "oldestBlock": "0x100000",
                "baseFeePerGas": [hex(10**9)] * 2,
                "gasUsedRatio": [0.5],
                "reward": [[hex(10**9)]],
            }
        raise LookupError(method)


def _word(value: int) -> bytes:
    return value.to_bytes(32, "big")


def _call(chain_id: int, data: bytes) -> bytes:
    """The result of a contract call: balances are large, anything else is zero."""
    if data[:4] == _BALANCE_OF:
        return _word(10**24)
    if data[:4] == _CALL_WITH_DETAILS:
        # yagna's wrapper contract: (address target, bytes call) in, and
        # (chain id, block number, block time, gas balance, call result) out.
        offset = int.from_bytes(data[4 + 32 : 4 + 64], "big")
        length = int.from_bytes(data[4 + offset : 4 + offset + 32], "big")
        inner = _call(chain_id, data[4 + offset + 32 : 4 + offset + 32 + length])
        padded = inner + b"\0" * (-len(inner) % 32)
        head = [
            _word(chain_id),
            _word(0x100000),
            _word(int(time.time())),
            _word(10**24),
            _word(5 * 32),
        ]
        return _word(32) + b"".join(head) + _word(len(inner)) + padded
    return _word(0)


def _block() -> dict[str, Any]:
    # A fresh timestamp: yagna treats a node whose newest block is old as out
    # of sync and reports it unreachable.
    return {
        "number": "0x100000",
        "hash": "0x" + "11" * 32,
        "parentHash": "0x" + "22" * 32,
        "timestamp": hex(int(time.time())),
        "baseFeePerGas": hex(10**9),
        "gasLimit": hex(30_000_000),
        "gasUsed": "0x0",
        "transactions": [],
        "miner": "0x" + "00" * 20,
        "difficulty": "0x0",
        "totalDifficulty": "0x0",
        "extraData": "0x",
        "size": "0x200",
        "nonce": "0x0000000000000000",
        "sha3Uncles": "0x" + "33" * 32,
        "uncles": [],
        "logsBloom": "0x" + "00" * 256,
        "transactionsRoot": "0x" + "44" * 32,
        "stateRoot": "0x" + "55" * 32,
        "receiptsRoot": "0x" + "66" * 32,
        "mixHash": "0x" + "77" * 32,
    }


def _handler(chain: _Chain, base: list[str]) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, format: str, *args: Any) -> None:
            pass

        def _send(self, status: int, body: Any) -> None:
            raw = json.dumps(body).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(raw)))
            self.end_headers()
            self.wfile.write(raw)

        def do_HEAD(self) -> None:  # image existence check
            self.send_response(200)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def do_GET(self) -> None:
            if self.path.startswith("/v1/image/info"):
                image = f"{base[0]}/images/hello.gvmi"
                self._send(200, {"http": image, "https": image, "sha3": "ab" * 28, "size": 1 << 20})
            else:
                self._send(404, {"error": "not found"})

        def do_POST(self) -> None:
            network = self.path.strip("/").split("/")[0]
            length = int(self.headers.get("Content-Length") or 0)
            request = json.loads(self.rfile.read(length) or b"null")
            batch = request if isinstance(request, list) else [request]
            replies = []
            for item in batch:
                reply: dict[str, Any] = {"jsonrpc": "2.0", "id": item.get("id")}
                try:
                    reply["result"] = chain.answer(
                        network, item["method"], item.get("params") or []
                    )
                except LookupError:
                    reply["error"] = {"code": -32601, "message": "method not available"}
                replies.append(reply)
            self._send(200, replies if isinstance(request, list) else replies[0])

    return Handler


class ChainStandIn:
    """A running stand-in: ``url`` is its base, ``geth_env()`` points yagna at it."""

    def __init__(self, server: ThreadingHTTPServer, chain: _Chain) -> None:
        self._server = server
        self._chain = chain
        port = server.server_address[1]
        self.url = f"http://127.0.0.1:{port}"

    @property
    def calls(self) -> list[tuple[str, str]]:
        with self._chain.lock:
            return list(self._chain.calls)

    def geth_env(self) -> dict[str, str]:
        return {f"{name.upper()}_GETH_ADDR": f"{self.url}/{name}" for name in CHAIN_IDS}


@contextmanager
def chain_stand_in() -> Iterator[ChainStandIn]:
    chain = _Chain()
    base: list[str] = [""]
    server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(chain, base))
    server.daemon_threads = True
    stand_in = ChainStandIn(server, chain)
    base[0] = stand_in.url
    thread = threading.Thread(target=server.serve_forever, name="chain-stand-in", daemon=True)
    thread.start()
    try:
        yield stand_in
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)
