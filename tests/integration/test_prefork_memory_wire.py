"""Children keep sharing the master's memory: its objects are frozen out of their garbage collections."""

from harness import plugin_source

# Answers NOOP with what the serving child's collector sees (a test-only plugin).
GC_REPORT = plugin_source("""
    import gc

    class GcReport(Plugin):
        def hook_noop(self, transaction):
            return DENY, f"frozen {gc.get_freeze_count()} tracked {len(gc.get_objects())}"
""")


def test_a_child_does_not_scan_the_objects_it_inherited(daemon_factory):
    daemon = daemon_factory(plugin_files={"gc_report": GC_REPORT}, extra_plugins=["gc_report"])
    with daemon.connect() as client:
        assert client.reply()[0] == 220
        client.send("NOOP\r\n")
        code, [text] = client.reply()
    assert code == 500
    frozen, tracked = (int(word) for word in text.split()[1::2])
    # Everything the master had loaded (Twisted, the core, the plugins; ~44,000 objects) is
    # frozen, far more than the few hundred the child's collector still tracks.
    assert frozen > 10 * tracked
