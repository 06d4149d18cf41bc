"""Scheduled tasks for the dashboard's Schedules page (tests/test_web_browser.py)."""

import zq


@zq.task(name="web.hourly_report", every=3600)
def hourly_report() -> str:
    return "report"


@zq.task(name="web.morning", cron="0 7 * * mon-fri", tz="Europe/Paris")
def morning() -> str:
    return "good morning"
