"""Template filters for the admin's numbers and times ({% load display %}): config/display.py does the work."""

from __future__ import annotations

from django import template

from config import display

register = template.Library()
register.filter("number", display.number)
register.filter("when", lambda moment: display.when(moment))
