"""steps_per_execution: compile(steps_per_execution=N>1) fails under any strategy.

Keras runs N steps in a tf.while_loop, each in a tf.cond that calls the step as a
separately traced tf.function. Under a distribution strategy that nested function
captures tensors it is never fed: "You must feed a value for placeholder tensor
'while/.../cond/Placeholder'". The repair keeps Keras's loop (same outputs, same
end-of-data handling) but traces the step inline in the loop.
"""

from __future__ import annotations

import tensorflow as tf

from tfdp import _compat
from tfdp.keras_fixes._base import Fix, Undo, check_methods, patch


def _apply() -> Undo:
    trainer = _compat.tf_trainer_class()
    stock_make_function = trainer._make_function

    def make_function(self, step_function):
        if self.steps_per_execution == 1 or _compat.distribute_strategy_of(self) is None or self.jit_compile:
            return stock_make_function(self, step_function)
        strategy = self.distribute_strategy
        reduce_per_replica = _compat.tf_trainer_function("reduce_per_replica")

        def one_step_on_data(data):
            outputs = strategy.run(step_function, args=(data,))
            return reduce_per_replica(outputs, strategy, reduction="auto")

        one_step_on_data = self._autoconvert_optionals(one_step_on_data)

        def step_or_keep(optional_data, previous, empty):
            """Runs a step when there is data; otherwise keeps the previous outputs."""
            def has_next():
                outputs = tf.experimental.Optional.from_value(one_step_on_data(optional_data.get_value()))
                _compat.set_optional_spec(empty, outputs.element_spec)  # Keras's own trick: the spec is known now.
                return outputs

            def no_next():
                _compat.set_optional_spec(previous, _compat.optional_spec(empty))
                return previous

            return tf.cond(optional_data.has_value(), has_next, no_next)

        @tf.function(reduce_retracing=True)
        def multi_step_on_iterator(iterator):
            empty = tf.experimental.Optional.empty(None)
            first = step_or_keep(iterator.get_next_as_optional(), empty, empty)

            def body(step, outputs):
                return step + 1, step_or_keep(iterator.get_next_as_optional(), outputs, empty)

            _, outputs = tf.while_loop(lambda step, _: step < self.steps_per_execution, body,
                                       [tf.constant(1), first])
            _compat.set_optional_spec(outputs, empty.element_spec)
            return outputs

        def function(iterator):
            outputs = multi_step_on_iterator(iterator)
            if not outputs.has_value():
                raise StopIteration
            return outputs.get_value()

        return function

    return patch(trainer, _make_function=make_function)


def _check() -> None:
    check_methods(_compat.tf_trainer_class(), {"_make_function": ("self", "step_function"),
                                               "_autoconvert_optionals": ("self", "step_func")})
    _compat.tf_trainer_function("reduce_per_replica")
    _compat.check_attributes("model", ("_distribute_strategy",))
    _compat.check_attributes("optional", ("_element_spec",))


FIX = Fix(
    name="steps_per_execution",
    upstream="https://github.com/keras-team/keras/issues/19246",
    problem="compile(steps_per_execution>1) fails under any distribution strategy",
    reproduced=("3.15.1", "3.16.0.dev2026102704"),
    test="tests/test_keras_fixes_needed.py::test_stock_keras_is_wrong_without[steps_per_execution]",
    check=_check,
    apply=_apply,
)
