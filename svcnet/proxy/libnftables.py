"""In-process nftables transactions through libnftables (ctypes), no fork/exec.

`nft -f -` pays for a process start and for reading its cache from the kernel on
every transaction. Calling libnftables in-process keeps the first cost away (about
20-40 ms per transaction here) and is what `NftWriter` uses when the library is
installed (Debian: libnftables1, which the nftables package depends on); otherwise
the writer falls back to the `nft` binary. Same input text, same atomicity: one
`nft_run_cmd_from_buffer` call is one kernel transaction.

Error text: libnftables formats errors with strerror(), which follows LC_MESSAGES.
Python only sets LC_CTYPE at start-up, so messages stay in the C locale and
`NftError.is_not_found()` and friends can match them (the knftables setlocale note).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import threading

from svcnet.proxy.nft_writer import NftError

NFT_CTX_DEFAULT = 0


class LibNftables:
    """A libnftables context; `__call__(script)` runs one transaction or raises NftError."""

    def __init__(self, path: str | None = None) -> None:
        name = path or ctypes.util.find_library("nftables") or "libnftables.so.1"
        try:
            lib = ctypes.CDLL(name)
        except OSError as e:
            raise NftError(f"cannot load libnftables ({name}): {e}") from None
        lib.nft_ctx_new.restype = ctypes.c_void_p
        lib.nft_ctx_new.argtypes = [ctypes.c_uint32]
        lib.nft_ctx_free.argtypes = [ctypes.c_void_p]
        lib.nft_ctx_buffer_output.argtypes = [ctypes.c_void_p]
        lib.nft_ctx_buffer_error.argtypes = [ctypes.c_void_p]
        lib.nft_ctx_get_error_buffer.restype = ctypes.c_char_p
        lib.nft_ctx_get_error_buffer.argtypes = [ctypes.c_void_p]
        lib.nft_ctx_get_output_buffer.restype = ctypes.c_char_p
        lib.nft_ctx_get_output_buffer.argtypes = [ctypes.c_void_p]
        lib.nft_run_cmd_from_buffer.restype = ctypes.c_int
        lib.nft_run_cmd_from_buffer.argtypes = [ctypes.c_void_p, ctypes.c_char_p]
        self._lib = lib
        self._ctx = lib.nft_ctx_new(NFT_CTX_DEFAULT)
        if not self._ctx:
            raise NftError("nft_ctx_new failed")
        lib.nft_ctx_buffer_output(self._ctx)
        lib.nft_ctx_buffer_error(self._ctx)
        self._lock = threading.Lock()  # a context is not thread-safe; syncs are serial anyway

    def __call__(self, script: str) -> None:
        with self._lock:
            rc = self._lib.nft_run_cmd_from_buffer(self._ctx, script.encode())
            err = (self._lib.nft_ctx_get_error_buffer(self._ctx) or b"").decode(errors="replace")
            self._lib.nft_ctx_get_output_buffer(self._ctx)  # drain
        if rc != 0:
            raise NftError("libnftables transaction failed", err, rc)

    def close(self) -> None:
        if self._ctx:
            self._lib.nft_ctx_free(self._ctx)
            self._ctx = None

    def __del__(self) -> None:
        try:
            self.close()
        except Exception:
            pass
