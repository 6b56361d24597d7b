"""The guarded adaptations of autobahn and txaio (cairn.transport.autobahn_compat)."""

import functools

import autobahn.websocket.protocol as protocol_module
from twisted.internet import task
from twisted.trial import unittest

from cairn.transport import autobahn_compat


class CompatTests(unittest.TestCase):
    def test_unchecked_version_left_alone(self):
        """An autobahn major the patch was not checked against is not patched."""
        self.assertFalse(autobahn_compat.install("99.1.0"))
        self.assertFalse(autobahn_compat.install("unknown"))

    def test_installed_lazily_and_unchanged_text(self):
        """On this autobahn the debug arguments are lazy, idempotently, and render as before."""
        self.assertTrue(autobahn_compat.install())
        self.assertTrue(autobahn_compat.install())
        self.assertTrue(getattr(protocol_module.hltype, "_cairn_lazy", False))
        self.assertEqual(str(protocol_module.pformat({"a": 1})), "{'a': 1}")

    def test_uninstalled_as_shipped(self):
        """
        L{uninstall} puts autobahn's own functions back in both modules
        (idempotently), and L{install} patches them again.
        """
        import pprint

        import autobahn.twisted.websocket as twisted_module
        import autobahn.util
        import autobahn.websocket.xormasker

        self.addCleanup(autobahn_compat.install)
        autobahn_compat.install()
        self.assertTrue(autobahn_compat.installed())
        autobahn_compat.uninstall()
        autobahn_compat.uninstall()
        self.assertFalse(autobahn_compat.installed())
        self.assertIs(protocol_module.pformat, pprint.pformat)
        self.assertIs(protocol_module.create_xor_masker, autobahn.websocket.xormasker.create_xor_masker)
        for module in (protocol_module, twisted_module):
            self.assertIs(module.hltype, autobahn.util.hltype)
            self.assertIs(module.hlval, autobahn.util.hlval)
        self.assertTrue(autobahn_compat.install())
        self.assertTrue(autobahn_compat.installed())
        self.assertTrue(getattr(twisted_module.hltype, "_cairn_lazy", False))

    def test_lazy_arguments_made_in_c_and_rendered_as_before(self):
        """
        The lazy debug arguments are C{functools.partial} objects (no Python
        call to make one, about 27 per handshake a side) that render the
        text autobahn's own functions give.
        """
        autobahn_compat.install()
        real = protocol_module.hlval.args[0]
        lazy = protocol_module.hlval(42)
        self.assertIsInstance(lazy, functools.partial)
        self.assertEqual(str(lazy), str(real(42)))
        self.assertEqual(repr(lazy), str(real(42)))
        self.assertEqual(f"{lazy:>30}", f"{real(42):>30}")
        self.assertEqual("<" + lazy + ">", "<" + real(42) + ">")

    def test_timers_on_the_clock(self):
        """A factory's handshake timers run on the injected clock."""
        clock, fired = task.Clock(), []

        class Factory:
            pass

        factory = Factory()
        autobahn_compat.use_clock(factory, clock)
        factory._batched_timer.call_later(1.0, fired.append, True)
        clock.advance(2.0)
        self.assertEqual(fired, [True])

    def test_small_frames_masked_as_autobahn_does(self):
        """
        Small payloads get cairn's masker, large ones autobahn's native XOR; all give
        the same bytes, whole or in pieces that continue the mask.
        """
        import os

        autobahn_compat.install()
        create = protocol_module.create_xor_masker
        self.assertTrue(create._cairn_small)
        self.assertIsInstance(create(b"abcd", 100), autobahn_compat.SmallFrameMasker)
        self.assertNotIsInstance(create(b"abcd", 100), autobahn_compat.NativeFrameMasker)
        self.assertIsInstance(create(b"abcd", autobahn_compat.SMALL_FRAME), autobahn_compat.NativeFrameMasker)
        for size in (1, 3, 4, 5, 125, 1100, 1150, 70000, autobahn_compat.SMALL_FRAME - 1, autobahn_compat.SMALL_FRAME):
            mask, payload = os.urandom(4), os.urandom(size)
            expected = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
            masker = create(mask, size)
            self.assertEqual(masker.process(payload), expected)
            self.assertEqual(masker.pointer(), size)
            for kind in (autobahn_compat.SmallFrameMasker, autobahn_compat.NativeFrameMasker):
                pieces = kind(mask)
                cut = [0, size // 3, size // 3 + 1, size]
                out = b"".join(pieces.process(payload[a:b]) for a, b in zip(cut, cut[1:]))
                self.assertEqual(out, expected)
                self.assertEqual(pieces.pointer(), size)
            self.assertEqual(create.real(mask, size).process(payload), expected)

    def test_large_frames_without_the_native_module(self):
        """Without autobahn's native XOR (or with it declined) large frames keep autobahn's masker."""
        import types

        def real(mask, length=None):
            return ("autobahn's", mask, length)

        module = types.SimpleNamespace(create_xor_masker=real)
        autobahn_compat.install_small_frame_masker(module, native=False)
        self.assertEqual(module.create_xor_masker(b"abcd", 2000), ("autobahn's", b"abcd", 2000))
        self.assertIsInstance(module.create_xor_masker(b"abcd", 10), autobahn_compat.SmallFrameMasker)
        self.patch(autobahn_compat, "_nvx_lib", None)
        module = types.SimpleNamespace(create_xor_masker=real)
        autobahn_compat.install_small_frame_masker(module)
        self.assertEqual(module.create_xor_masker(b"abcd", 2000), ("autobahn's", b"abcd", 2000))

    def test_installed_native_masker_known_by_identity(self):
        """With cairn's native masker installed, mask_payload knows it by identity and gives autobahn's bytes."""
        import os

        autobahn_compat.install()
        installed = protocol_module.create_xor_masker
        if not installed.native:
            raise unittest.SkipTest("autobahn without its native XOR")
        self.assertIs(autobahn_compat._native_create, installed)
        for size in (0, 1, 5, autobahn_compat.SMALL_FRAME - 1, autobahn_compat.SMALL_FRAME, 1100, 65535):
            mask, payload = os.urandom(4), os.urandom(size)
            expected = installed.real(mask, size).process(payload) if size else b""
            self.assertEqual(autobahn_compat.mask_payload(mask, payload), expected, size)

    def test_whole_payload_masked_without_a_masker(self):
        """
        mask_payload gives what autobahn's masker gives for a whole payload,
        without making a masker when cairn's is installed; with autobahn's
        own (or a large payload without the native XOR), autobahn's.
        """
        import os
        import types

        autobahn_compat.install()
        made = []
        real_create = protocol_module.create_xor_masker
        self.patch(protocol_module, "create_xor_masker", lambda *a: (made.append(a), real_create(*a))[1])
        protocol_module.create_xor_masker._cairn_small = True
        protocol_module.create_xor_masker.native = real_create.native
        for size in (0, 1, 3, 4, 5, 125, 1100, 65535, autobahn_compat.SMALL_FRAME - 1, autobahn_compat.SMALL_FRAME):
            mask, payload = os.urandom(4), os.urandom(size)
            expected = real_create.real(mask, size).process(payload) if size else b""
            self.assertEqual(autobahn_compat.mask_payload(mask, payload), expected, size)
        self.assertEqual(made, [])

        def autobahns(mask, length=None):
            return types.SimpleNamespace(process=lambda data: ("autobahn's", mask, length, data))

        module = types.SimpleNamespace(create_xor_masker=autobahns)
        self.assertEqual(autobahn_compat.mask_payload(b"abcd", b"xy", module), ("autobahn's", b"abcd", 2, b"xy"))
        autobahn_compat.install_small_frame_masker(module, native=False)
        self.assertEqual(autobahn_compat.mask_payload(b"abcd", b"xy", module), bytes([ord("x") ^ 97, ord("y") ^ 98]))
        big = b"z" * 2000
        self.assertEqual(autobahn_compat.mask_payload(b"abcd", big, module), ("autobahn's", b"abcd", 2000, big))
