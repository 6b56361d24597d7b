"""
The two places where cairn reaches into autobahn and txaio, in one module
so that an upgrade has one file to check. Both are guarded: on a version
where what they touch is missing or different, they do nothing and cairn
still works (only slower, or with autobahn's timers on the global reactor).

1. Debug-log arguments (L{install_lazy_debug_arguments}). autobahn builds
   the arguments of its debug log events whether or not anything logs at
   debug level. On every new connection it formats its whole option table
   with C{pprint.pformat} (and a client its transport details too), about
   90 us on each side, more than a third of what cairn's WebSocket layer
   costs per handshake; and every C{dataReceived} and every handshake step
   colours a method name and values for an event (about 2 us each). The
   patch makes those arguments objects that do the formatting only when an
   event is actually rendered; the rendered text is unchanged. Applied only
   to the autobahn majors it was checked against (L{CHECKED_AUTOBAHN}).

2. The clock of autobahn's timers (L{use_clock}). autobahn runs its opening
   and closing handshake timeouts through C{factory._batched_timer}, a
   txaio C{_BatchedTimer} (private to txaio) made on the global reactor; the
   node injects its clock everywhere (tests use C{task.Clock}), so the
   factory gets one on the peer's clock. Neither txaio nor autobahn has a
   public way to pass a clock.

3. Masking small frames (L{install_small_frame_masker}). autobahn masks
   and unmasks each frame's payload through an object made per frame by
   C{create_xor_masker}: on CPython a CFFI wrapper that allocates a mask
   buffer, a native object with a finalizer, and for every payload a
   buffer it copies in and out of, about 3.5 us per frame whatever its
   size. Every client-to-server frame is masked, so this is paid on both
   sides of every cairn message over WebSocket (a handshake has four). For
   payloads below L{SMALL_FRAME} bytes the XOR is done with Python's
   integers (one C-level operation over the whole payload): about 1 us and
   14,000 instructions for 100 bytes, against autobahn's 3.5 us and 33,000.
   From about 600 bytes the integers cost more instructions (57,000
   against 36,000 at 1,150, though less time, 2.9 against 3.6 us), and they
   grow with the payload; larger frames (a 1 KiB Data message's) go to
   L{NativeFrameMasker}: autobahn's own native XOR (its CFFI module
   C{_nvx_xormasker}) called per payload piece without the per-frame
   wrapper, 15,000 instead of 31,000 instructions at 1,150 bytes (issue
   19). Where that module is missing (autobahn built without NVX), they
   keep autobahn's masker. cairn's own frame writes and whole-frame reads
   mask a whole payload at once through L{mask_payload}, the same XORs
   without a masker object per frame. The bytes are the same (RFC 6455 section 5.3).
   There is no maintained library masker to call instead: wsproto's is a
   Python class around the same integer XOR without C{pointer()}, the
   websockets package's C one is not a dependency of cairn.
"""

import functools
import sys

import autobahn
import autobahn.twisted.websocket as _autobahn_twisted
import autobahn.websocket.protocol as _autobahn_protocol

try:
    from txaio._common import _BatchedTimer
except ImportError:  # a txaio without it: autobahn's timers stay on the global reactor
    _BatchedTimer = None

try:  # autobahn's native XOR masker (built when autobahn uses NVX)
    from _nvx_xormasker import ffi as _nvx_ffi
    from _nvx_xormasker import lib as _nvx_lib
except ImportError:
    _nvx_ffi = _nvx_lib = None

#: autobahn major versions (year) whose debug logging the patch was checked against.
CHECKED_AUTOBAHN = range(24, 27)


def _major(version: str) -> int:
    try:
        return int(version.split(".")[0])
    except ValueError:
        return -1


def install(version=autobahn.__version__) -> bool:
    """Apply the debug-log and masker patches if this autobahn is one they were checked against; whether it was."""
    if _major(version) not in CHECKED_AUTOBAHN:
        return False
    install_lazy_debug_arguments()
    install_small_frame_masker()
    return True


def uninstall(protocol_module=_autobahn_protocol, twisted_module=_autobahn_twisted) -> None:
    """
    Undo L{install}: autobahn's own functions back in its modules, as
    shipped. The patches are process-wide; an application that embeds a
    node and wants autobahn's own behaviour elsewhere (or a bench measuring
    autobahn itself) calls this, and L{install} again before cairn's
    WebSocket transport is used. Idempotent.
    """
    for module in (protocol_module, twisted_module):
        for name in ("hltype", "hlval", "pformat"):
            func = getattr(module, name, None)
            if getattr(func, "_cairn_lazy", False):
                setattr(module, name, func.real)
    masker = getattr(protocol_module, "create_xor_masker", None)
    if getattr(masker, "_cairn_small", False):
        protocol_module.create_xor_masker = masker.real


def installed(protocol_module=_autobahn_protocol) -> bool:
    """Whether L{install}'s patches are in autobahn now (its masker is the sign)."""
    return getattr(getattr(protocol_module, "create_xor_masker", None), "_cairn_small", False)


def use_clock(factory, clock) -> None:
    """Run C{factory}'s handshake timers on C{clock} (an C{IReactorTime}), where txaio allows it."""
    if _BatchedTimer is not None:
        factory._batched_timer = _BatchedTimer(
            200.0, 1000, seconds_provider=clock.seconds, delayed_call_creator=clock.callLater
        )


class _Lazy(functools.partial):
    """
    C{str(func(*args))}, computed when (and each time) it is shown.

    A C{functools.partial}: made in C, with no Python C{__init__} per
    object. autobahn asks for about 27 of these per WebSocket handshake on
    each side; as a plain class with a Python-level maker they cost about
    five times as much (a few microseconds each, most of what the patch
    was meant to save).
    """

    __slots__ = ()

    def __str__(self):
        return str(self.func(*self.args))

    __repr__ = __str__

    def __format__(self, spec):
        return format(str(self), spec)

    def __add__(self, other):
        return str(self) + other

    def __radd__(self, other):
        return other + str(self)


def _lazy(func):
    lazy = functools.partial(_Lazy, func)
    lazy._cairn_lazy = True
    lazy.real = func
    return lazy


def install_lazy_debug_arguments(protocol_module=_autobahn_protocol, twisted_module=_autobahn_twisted):
    """
    Make autobahn build the arguments of its per-connection and per-read
    debug log events only when an event is rendered.

      - C{hltype} and C{hlval} (coloured names and values) are used by
        these two modules only as log event arguments: both become lazy.
      - C{pformat} is lazy only when called from
        C{WebSocketProtocol._connectionMade} or
        C{WebSocketClientProtocol.startHandshake}, whose arguments are
        built there and never changed; its other uses need a real string.

    The rendered text is what autobahn would have logged. Idempotent; leaves
    alone whatever this autobahn does not have.
    """
    for module in (protocol_module, twisted_module):
        for name in ("hltype", "hlval"):
            func = getattr(module, name, None)
            if func is not None and not getattr(func, "_cairn_lazy", False):
                setattr(module, name, _lazy(func))
    real = getattr(protocol_module, "pformat", None)
    if real is None or getattr(real, "_cairn_lazy", False):
        return
    try:
        callers = frozenset(
            (
                protocol_module.WebSocketProtocol._connectionMade.__code__,
                protocol_module.WebSocketClientProtocol.startHandshake.__code__,
            )
        )
    except AttributeError:
        return

    def pformat(obj, *args, **kwargs):
        if not args and not kwargs and sys._getframe(1).f_code in callers:
            return _Lazy(real, obj)
        return real(obj, *args, **kwargs)

    pformat._cairn_lazy = True
    pformat.real = real
    protocol_module.pformat = pformat


#: Payloads shorter than this are masked by L{SmallFrameMasker}: fewer
#: instructions than autobahn's CFFI masker below about 600 bytes (callgrind)
#: and less time below about 1,300. The handshake's and keepalives' frames.
SMALL_FRAME = 512


class SmallFrameMasker:
    """
    autobahn's masker interface (C{process}, C{pointer}, C{reset}) for one
    frame's payload, XORing with Python integers; see the module docstring.
    A payload may come in several pieces: C{pointer} is how much of it was
    processed, and the mask continues from there.
    """

    __slots__ = ("_mask", "_pointer")

    def __init__(self, mask: bytes):
        self._mask = bytes(mask)
        self._pointer = 0

    def pointer(self) -> int:
        return self._pointer

    def reset(self) -> None:
        self._pointer = 0

    def _next_mask(self, n: int) -> bytes:
        """The mask as it stands at the current pointer (rotated), and the pointer moved past C{n} bytes."""
        mask = self._mask
        shift = self._pointer & 3
        if shift:
            mask = mask[shift:] + mask[:shift]
        self._pointer += n
        return mask

    def process(self, data: bytes) -> bytes:
        return _int_xor(self._next_mask(len(data)), data)


def _int_xor(mask: bytes, data: bytes) -> bytes:
    """C{data} XORed with C{mask} repeated, by Python integers (L{SmallFrameMasker})."""
    n = len(data)
    key = (mask * ((n >> 2) + 1))[:n]
    return (int.from_bytes(data, "little") ^ int.from_bytes(key, "little")).to_bytes(n, "little")


def _native_xor(mask: bytes, data: bytes) -> bytearray:
    """
    C{data} XORed with C{mask} repeated, by autobahn's native XOR
    (L{NativeFrameMasker}), as a new C{bytearray}: the XOR is done in place
    in it, and a copy into C{bytes} (about 1,500 instructions at 1,100
    bytes) is left to the callers that need one.
    """
    buf = bytearray(data)
    masker = _nvx_new(mask)
    if masker == _nvx_null:
        raise MemoryError("nvx_xormask_new")
    try:
        _nvx_process(masker, _nvx_from_buffer(buf), len(buf))
    finally:
        _nvx_free(masker)
    return buf


# Bound once: each was a module attribute lookup per call. With the copy
# into bytes left to the callers, a 1,100-byte payload costs about 8,000
# instructions instead of 11,500 (callgrind, 20,000 vs 40,000 calls, the
# loop's own cost taken off; issue 19).
if _nvx_lib is not None:
    _nvx_new, _nvx_process = _nvx_lib.nvx_xormask_new, _nvx_lib.nvx_xormask_process
    _nvx_free = _nvx_lib.nvx_xormask_free
    _nvx_from_buffer, _nvx_null = _nvx_ffi.from_buffer, _nvx_ffi.NULL


class NativeFrameMasker(SmallFrameMasker):
    """
    L{SmallFrameMasker}'s interface over autobahn's native XOR
    (C{nvx_xormask_process}): per payload piece one native masker made
    and freed at once, the piece XORed in place in a C{bytearray}. What it
    leaves out of autobahn's wrapper (made per frame): the mask buffer, the
    finalizer, the module import in its constructor, and a zeroed buffer
    copied in and out per piece.
    """

    __slots__ = ()

    def process(self, data: bytes) -> bytes:
        return bytes(_native_xor(self._next_mask(len(data)), data))


def mask_payload(key: bytes, data: bytes, protocol_module=_autobahn_protocol):
    """
    C{data}, a whole frame's payload, masked with C{key} (RFC 6455
    section 5.3): what C{create_xor_masker(key, len(data)).process(data)}
    gives, without the masker object per frame when it is cairn's
    (L{install_small_frame_masker}; about 3,400 of 16,500 instructions at
    1,100 bytes). With autobahn's own masker installed, autobahn's. The
    same bytes, as C{bytes} or (masked natively) a C{bytearray}.
    """
    create = protocol_module.create_xor_masker
    n = len(data)
    if create is _native_create:  # the usual case, told without reading two attributes (issue 19)
        return _int_xor(key, data) if n < SMALL_FRAME else _native_xor(key, data)
    if not getattr(create, "_cairn_small", False) or (n >= SMALL_FRAME and not create.native):
        return create(key, n).process(data)
    return _int_xor(key, data) if n < SMALL_FRAME else _native_xor(key, data)


#: The masker L{install_small_frame_masker} last installed with the native
#: XOR: L{mask_payload} knows it by identity.
_native_create = None


def install_small_frame_masker(protocol_module=_autobahn_protocol, native: bool = True) -> None:
    """
    Make autobahn's protocol module mask payloads shorter than
    L{SMALL_FRAME} with L{SmallFrameMasker}, and longer ones with
    L{NativeFrameMasker} if autobahn's native module is there (and
    C{native}). Idempotent; leaves alone a module without
    C{create_xor_masker}.
    """
    real = getattr(protocol_module, "create_xor_masker", None)
    if real is None or getattr(real, "_cairn_small", False):
        return
    if native and _nvx_lib is not None:

        def create_xor_masker(mask, length=None):
            if length is not None and length < SMALL_FRAME:
                return SmallFrameMasker(mask)
            return NativeFrameMasker(mask)

    else:

        def create_xor_masker(mask, length=None):
            if length is not None and length < SMALL_FRAME:
                return SmallFrameMasker(mask)
            return real(mask, length)

    create_xor_masker._cairn_small = True
    create_xor_masker.native = native and _nvx_lib is not None
    if create_xor_masker.native:
        global _native_create
        _native_create = create_xor_masker
    create_xor_masker.real = real
    protocol_module.create_xor_masker = create_xor_masker
