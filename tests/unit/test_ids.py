"""Client and session ids from the pooled generator: uuid4 strings, unique, fresh in a forked child."""

import os
import re
import uuid

from uniws import ids

UUID4 = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}")


def test_ids_are_rfc4122_version_4_strings_as_uuid_formats_them():
    for _ in range(3 * ids.BATCH):          # across refills
        text = ids.new_id()
        assert UUID4.fullmatch(text)
        parsed = uuid.UUID(text)
        assert parsed.version == 4 and parsed.variant == uuid.RFC_4122
        assert str(parsed) == text


def test_ids_do_not_repeat():
    made = [ids.new_id() for _ in range(20 * ids.BATCH)]
    assert len(set(made)) == len(made)


def test_every_random_digit_varies():
    # Over many ids each free hex position takes many values (no position stuck to the pool index).
    made = [ids.new_id().replace("-", "") for _ in range(4 * ids.BATCH)]
    for position in range(32):
        seen = {text[position] for text in made}
        if position == 12:
            assert seen == {"4"}
        elif position == 16:
            assert seen == set("89ab")
        else:
            assert len(seen) > 8


def test_a_forked_child_does_not_reuse_the_parents_pool():
    ids.new_id()                              # the parent's pool holds ids now
    parent_next = ids._pool[-1]
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:
        try:
            os.write(write, ids.new_id().encode())
        finally:
            os._exit(0)
    os.close(write)
    child = os.read(read, 64).decode()
    os.close(read)
    os.waitpid(pid, 0)
    assert UUID4.fullmatch(child)
    assert child != parent_next and child not in ids._pool
