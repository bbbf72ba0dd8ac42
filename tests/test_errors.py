"""The error family: every error class, its code and its HTTP status, written out here so that a
renamed code (an interface change for every API client and script) fails this test."""
from __future__ import annotations

import importlib
import pkgutil

import pytest

import esl_cb
from esl_cb.domain.errors import EslCbError

# module.Class -> (code, HTTP status). Add a row for a new error; never change a code.
EXPECTED = {
    "esl_cb.domain.errors.EslCbError": ("error", 500),
    "esl_cb.domain.errors.InvalidInput": ("invalid_input", 422),
    "esl_cb.domain.errors.Unavailable": ("unavailable", 503),
    "esl_cb.domain.errors.DatabaseUnavailable": ("database_unavailable", 503),
    "esl_cb.domain.errors.SchemaMissing": ("schema_missing", 503),
    "esl_cb.domain.numbers.InvalidNumber": ("invalid_number", 422),
    "esl_cb.domain.hours.HoursError": ("invalid_hours", 422),
    "esl_cb.domain.policy.PolicyError": ("invalid_policy", 422),
    "esl_cb.domain.condition.ConditionError": ("invalid_condition", 422),
    "esl_cb.domain.script.ScriptInvalid": ("invalid_script", 422),
    "esl_cb.config.ConfigError": ("invalid_config", 500),
    "esl_cb.db.base.StoreError": ("conflict", 409),
    "esl_cb.db.base.StaleState": ("wrong_state", 409),
    "esl_cb.db.base.IllegalTransition": ("illegal_transition", 500),
    "esl_cb.db.base.Fenced": ("fenced", 409),
    "esl_cb.db.base.NotFound": ("not_found", 404),
    "esl_cb.db.base.UnknownSkill": ("unknown_skill", 422),
    "esl_cb.db.base.PolicyRefused": ("policy_refused", 422),
    "esl_cb.db.base.RateLimited": ("rate_limited", 429),
    "esl_cb.api.errors.Unauthenticated": ("unauthenticated", 401),
    "esl_cb.api.errors.Forbidden": ("forbidden", 403),
    "esl_cb.api.errors.TooManyRequests": ("too_many_requests", 429),
    "esl_cb.api.errors.IdempotencyKeyReused": ("idempotency_key_reused", 422),
    "esl_cb.db.api_records.IdempotencyKeyInUse": ("idempotency_key_in_use", 409),
    "esl_cb.api.errors.RequestTooLarge": ("request_too_large", 413),
    "esl_cb.api.errors.MethodNotAllowed": ("method_not_allowed", 405),
}


def _every_error_class() -> dict[str, type]:
    # Import every module, so that no error class is missed because nobody imported its module yet.
    for info in pkgutil.walk_packages(esl_cb.__path__, "esl_cb."):
        importlib.import_module(info.name)
    found, todo = {}, [EslCbError]
    while todo:
        cls = todo.pop()
        found[f"{cls.__module__}.{cls.__qualname__}"] = cls
        todo += cls.__subclasses__()
    return found


def test_every_error_has_its_stable_code_and_status():
    got = {name: (cls.code, cls.http_status) for name, cls in _every_error_class().items()}
    assert got == EXPECTED


def test_codes_are_unique_snake_case_and_titled():
    classes = _every_error_class().values()
    codes = [cls.code for cls in classes]
    assert len(codes) == len(set(codes))
    for cls in classes:
        assert cls.code.replace("_", "").isalpha() and cls.code == cls.code.lower(), cls
        assert 400 <= cls.http_status <= 599 and cls.title, cls
        assert "code" in vars(cls), f"{cls.__name__} inherits its parent's code: give it its own"


def test_the_old_names_and_bases_still_hold():
    """Code that catches ValueError, StoreError or reads PolicyRefused.rule keeps working."""
    from esl_cb.config import ConfigError
    from esl_cb.db.store import NotFound, PolicyRefused, StaleState, StoreError
    from esl_cb.domain.numbers import InvalidNumber, normalize

    with pytest.raises(ValueError) as bad:
        normalize("12 ext 3")
    assert isinstance(bad.value, InvalidNumber) and bad.value.code == "invalid_number"
    assert issubclass(ConfigError, ValueError)
    assert all(issubclass(c, StoreError) for c in (NotFound, PolicyRefused, StaleState))
    refused = PolicyRefused("+19005550100: a premium-rate number", "type", "+13125550100")
    assert (refused.rule, refused.calling_number, str(refused)) == ("type", "+13125550100",
                                                                   "+19005550100: a premium-rate number")


def test_an_error_is_a_problem_document():
    from esl_cb.db.base import RateLimited

    e = RateLimited("+13125550100 was asked to be called back 3 times in the last 24 hours", "per_number",
                    where="number")
    assert e.problem() == {"type": "urn:esl-cb:problem:rate_limited", "title": "too many callbacks requested",
                           "status": 429, "detail": "+13125550100 was asked to be called back 3 times in the last "
                           "24 hours", "code": "rate_limited", "where": "number"}
