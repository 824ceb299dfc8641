from qcompile.deadline import Deadline


def test_no_deadline_never_expires():
    deadline = Deadline()
    assert not deadline.expired() and not deadline.cut


def test_a_passed_deadline_expires_and_stays_expired():
    deadline = Deadline(0.0)
    assert deadline.expired() and deadline.cut and deadline.expired()
    assert not Deadline(3600.0).expired()
