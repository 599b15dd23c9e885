"""``mpsctl plan``: will this model fit, at this concurrency, on this machine.

Pure arithmetic over a model's shape (config.json, safetensors headers or a published
preset) and the machine's limit; never imports torch. See docs/plan.md.
"""

from mpsctl.plan.plan import SCHEMA, Plan, make_plan, plan_for_settings

__all__ = ["SCHEMA", "Plan", "make_plan", "plan_for_settings"]
