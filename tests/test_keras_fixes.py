"""The registry of upstream repairs: installed by create_strategy, never silently off."""

import dataclasses
import functools
import logging
import re
from pathlib import Path

import keras
import pytest

import tfdp
from tfdp import _compat, keras_fixes
from tfdp._requirements import VERIFIED_KERAS, parse_version

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def restore_repairs():
    """Reinstalls every repair afterwards (request it before monkeypatch: it is undone last)."""
    yield
    keras_fixes.install(exclude=())


def test_create_strategy_installs_every_repair_this_keras_needs():
    tfdp.create_strategy("mirrored", num_cpu_replicas=2)
    assert set(keras_fixes.installed()) == {fix.name for fix in keras_fixes.FIXES if keras_fixes.is_needed(fix)}
    assert len(keras_fixes.installed()) == 8


def test_every_repair_states_its_upstream_link_versions_and_the_test_that_shows_it():
    links = [fix.upstream for fix in keras_fixes.FIXES]
    for fix in keras_fixes.FIXES:
        assert re.fullmatch(r"https://github\.com/[\w-]+/[\w-]+/(issues|pull)/\d+", fix.upstream), fix.upstream
        first, last = map(parse_version, fix.reproduced)
        assert parse_version(VERIFIED_KERAS[0]) <= first <= last <= parse_version(VERIFIED_KERAS[1])
        path, _, name = fix.test.partition("::")
        assert re.search(rf"def {re.escape(name.split('[')[0])}\(", (ROOT / path).read_text()), fix.test
    assert len(set(links)) == len(links)  # one report per bug


def test_a_repair_retired_upstream_is_left_out():
    fix = next(f for f in keras_fixes.FIXES if f.name == "partial_batch")
    assert keras_fixes.is_needed(fix)
    retired = dataclasses.replace(fix, fixed_in="3.15.0")
    assert not keras_fixes.is_needed(retired, "3.15.1") and keras_fixes.is_needed(retired, "3.14.9")


def test_exclude_is_remembered_by_create_strategy(restore_repairs):
    assert "partial_batch" not in keras_fixes.install(exclude=["partial_batch"])
    tfdp.create_strategy("mirrored", num_cpu_replicas=2)
    assert "partial_batch" not in keras_fixes.installed()
    with pytest.raises(tfdp.ConfigError, match='Did you mean "partial_batch"'):
        keras_fixes.install(exclude=["partial_btach"])
    keras_fixes.uninstall()
    assert keras_fixes.installed() == ()
    assert "partial_batch" in keras_fixes.install(exclude=())


def test_a_keras_newer_than_verified_gets_the_repairs_and_one_warning(restore_repairs, monkeypatch, caplog):
    keras_fixes.uninstall()
    monkeypatch.setattr(keras, "__version__", "3.99.0")
    monkeypatch.setattr(keras_fixes, "_warned_newer", False)
    with caplog.at_level(logging.WARNING, logger="tfdp"):
        tfdp.create_strategy("mirrored", num_cpu_replicas=2)
        tfdp.create_strategy("mirrored", num_cpu_replicas=2)
    warnings = [r.getMessage() for r in caplog.records if "newer than" in r.getMessage()]
    assert len(warnings) == 1 and f"{VERIFIED_KERAS[0]} to {VERIFIED_KERAS[1]}" in warnings[0]
    assert len(keras_fixes.installed()) == len(keras_fixes.FIXES)


def test_the_verified_nightly_gets_no_warning(restore_repairs, monkeypatch, caplog):
    keras_fixes.uninstall()
    monkeypatch.setattr(keras, "__version__", VERIFIED_KERAS[1])
    monkeypatch.setattr(keras_fixes, "_warned_newer", False)
    with caplog.at_level(logging.WARNING, logger="tfdp"):
        keras_fixes.install()
    assert "newer than" not in caplog.text


def test_a_missing_keras_internal_is_a_config_error_naming_the_repair(restore_repairs, monkeypatch):
    keras_fixes.uninstall()
    monkeypatch.delattr(_compat.tf_trainer_class(), "_maybe_symbolic_build")
    with pytest.raises(tfdp.ConfigError) as raised:
        tfdp.create_strategy("mirrored", num_cpu_replicas=2)
    message = str(raised.value)
    for part in ("'multi_worker_fit'", f"Keras {keras.__version__}", "_maybe_symbolic_build does not exist",
                 f'keras>={VERIFIED_KERAS[0]},<={VERIFIED_KERAS[1]}', 'install(exclude=["multi_worker_fit"])'):
        assert part in message
    assert keras_fixes.installed() == ()  # nothing half-installed
    keras_fixes.install(exclude=["multi_worker_fit"])  # the way out the message names
    assert "multi_worker_fit" not in keras_fixes.installed() and len(keras_fixes.installed()) == 7


def test_a_changed_signature_is_a_config_error(restore_repairs, monkeypatch):
    keras_fixes.uninstall()
    monkeypatch.setattr(keras.callbacks.BackupAndRestore, "_save_model", lambda self, epoch: None)
    with pytest.raises(tfdp.ConfigError, match=r"'backup_and_restore'.*_save_model takes \(self, epoch\)"):
        keras_fixes.install()


def test_private_classes_are_found_by_their_module_not_their_name():
    trainer, base = _compat.tf_trainer_class(), _compat.base_trainer_class()
    assert trainer.__module__ == "keras.src.backend.tensorflow.trainer" and issubclass(trainer, base)
    assert trainer in keras.Model.__mro__ and base in keras.Model.__mro__
    assert issubclass(keras.optimizers.Adam, _compat.tf_optimizer_class())


def test_the_newest_verified_keras_is_the_pinned_nightly_of_ci():
    pin = (ROOT / ".ci" / "keras-nightly.txt").read_text().strip()
    assert pin == f"keras-nightly=={VERIFIED_KERAS[1]}"


def _without(monkeypatch, owner, method: str, attribute: str) -> None:
    """Makes `owner.method` leave no `attribute` behind: a Keras that renamed it."""
    stock = getattr(owner, method)

    @functools.wraps(stock)  # the same signature: only the attribute is gone
    def renamed(self, *args, **kwargs):
        result = stock(self, *args, **kwargs)
        if attribute in vars(self):
            delattr(self, attribute)
        return result

    monkeypatch.setattr(owner, method, renamed)


def _take_away(monkeypatch, kind: str, attribute: str) -> None:
    import tensorflow as tf

    if kind == "model":
        _without(monkeypatch, _compat.tf_trainer_class(), "__init__", attribute)
    elif kind == "optimizer":
        _without(monkeypatch, keras.optimizers.SGD, "build", attribute)
    elif kind == "backup_callback":
        _without(monkeypatch, keras.callbacks.BackupAndRestore, "__init__", attribute)
    else:
        stock_empty = tf.experimental.Optional.empty

        def empty(spec):
            optional = stock_empty(spec)
            delattr(optional, attribute)
            return optional

        monkeypatch.setattr(tf.experimental.Optional, "empty", staticmethod(empty))


PRIVATE_ATTRIBUTES = [(kind, name) for kind, names in _compat.PRIVATE_ATTRIBUTES.items() for name in names
                      if name != "_distribution_strategy"]  # the Trainer's: the test below


@pytest.mark.parametrize("kind,attribute", PRIVATE_ATTRIBUTES, ids=[name for _, name in PRIVATE_ATTRIBUTES])
def test_a_missing_private_attribute_is_a_config_error_at_install_naming_the_repair(restore_repairs, monkeypatch,
                                                                                    kind, attribute):
    keras_fixes.uninstall()
    _take_away(monkeypatch, kind, attribute)
    with pytest.raises(tfdp.ConfigError) as raised:
        keras_fixes.install()
    message = str(raised.value)
    repair = re.search(r"repair '(\w+)'", message) or re.search(r"'(\w+)'", message)
    source = (ROOT / "tfdp" / "keras_fixes" / f"{repair.group(1)}.py").read_text()
    assert f"{attribute} (an attribute) does not exist" in message and "install(exclude=[" in message
    assert re.search(rf"check_attributes\(\"{kind}\", \([^)]*\"{attribute}\"", source), (repair.group(1), message)
    assert keras_fixes.installed() == ()  # nothing half-installed


def test_every_private_attribute_the_repairs_read_is_checked_by_them():
    sources = "".join(path.read_text() for path in (ROOT / "tfdp" / "keras_fixes").glob("*.py"))
    checked = set(re.findall(r"check_attributes\(\"(\w+)\", \(([^)]*)\)", sources))
    checked = {(kind, name) for kind, names in checked for name in re.findall(r"\"(\w+)\"", names)}
    assert checked == set(PRIVATE_ATTRIBUTES)


def test_an_optimizer_without_its_strategy_binding_is_a_config_error_for_the_trainer(monkeypatch):
    import tensorflow as tf

    strategy = tf.distribute.get_strategy()
    model = keras.Sequential([keras.Input((2,)), keras.layers.Dense(1)])
    _without(monkeypatch, _compat.tf_optimizer_class(), "__init__", "_distribution_strategy")
    with pytest.raises(tfdp.ConfigError, match="_distribution_strategy does not exist"):
        tfdp.Trainer(model, optimizer=keras.optimizers.SGD(0.1), loss="mse", strategy=strategy)
