"""SQL helper functions for the set-based criteria evaluator (audiences/criteria_sql.py), PostgreSQL only.

They implement the value views of docs/criteria.md ("Values, types and comparisons"):

* af_numeric(jsonb) -> numeric: a JSON number, or a string whose trimmed text is `-?[0-9]+(.[0-9]+)?`.
  LANGUAGE sql IMMUTABLE so the planner inlines it.
* af_boolean(jsonb) -> boolean: a JSON boolean, or the string true / false in any case.
* af_timestamp(text) -> timestamptz: the date view; NULL when the text is not one of the accepted forms
  or names an impossible instant (2026-02-30, 24:00, a second 60, an offset of 24 hours or more).
  Every field is range-checked before make_timestamp, so nothing can raise. Deliberately no EXCEPTION block:
  it would start a subtransaction per call, which is slow and refused inside parallel workers
  ("cannot start subtransactions during a parallel operation"), and the function is PARALLEL SAFE.
"""

from django.db import migrations

CREATE_SQL = r"""
CREATE OR REPLACE FUNCTION af_numeric(v jsonb) RETURNS numeric
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
  SELECT CASE jsonb_typeof(v)
    WHEN 'number' THEN (v #>> '{}')::numeric
    WHEN 'string' THEN
      CASE WHEN btrim(v #>> '{}', E' \t\n\r\f\x0b') ~ '^-?[0-9]+(\.[0-9]+)?$'
           THEN btrim(v #>> '{}', E' \t\n\r\f\x0b')::numeric END
  END
$$;

CREATE OR REPLACE FUNCTION af_boolean(v jsonb) RETURNS boolean
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
  SELECT CASE jsonb_typeof(v)
    WHEN 'boolean' THEN (v #>> '{}')::boolean
    WHEN 'string' THEN CASE lower(v #>> '{}') WHEN 'true' THEN true WHEN 'false' THEN false END
  END
$$;

CREATE OR REPLACE FUNCTION af_timestamp(s text) RETURNS timestamptz
LANGUAGE plpgsql IMMUTABLE PARALLEL SAFE AS $$
DECLARE
  y int; mo int; d int; h int := 0; mi int := 0; sec int := 0;
  fraction text := '';
  rest text;
  digits text;
  offset_minutes int := 0;
BEGIN
  -- One match without capture groups (regexp_match with captures is several times slower), then the
  -- fields are read by position.
  IF s IS NULL OR s !~ ('^[0-9]{4}-[0-9]{2}-[0-9]{2}(?:[T ][0-9]{2}:[0-9]{2}(?::[0-9]{2}(?:\.[0-9]{1,6})?)?'
                        '(?:Z|[+-][0-9]{2}:?[0-9]{2})?)?$') THEN
    RETURN NULL;
  END IF;
  y := substr(s, 1, 4)::int; mo := substr(s, 6, 2)::int; d := substr(s, 9, 2)::int;
  IF length(s) > 10 THEN
    h := substr(s, 12, 2)::int; mi := substr(s, 15, 2)::int;
    rest := substr(s, 17);
    IF left(rest, 1) = ':' THEN
      sec := substr(rest, 2, 2)::int;
      rest := substr(rest, 4);
      IF left(rest, 1) = '.' THEN
        digits := substr(rest, 2);
        rest := ltrim(digits, '0123456789');
        fraction := '.' || left(digits, length(digits) - length(rest));
      END IF;
    END IF;
    IF rest <> '' AND rest <> 'Z' THEN
      IF substr(rest, 2, 2)::int > 23 OR right(rest, 2)::int > 59 THEN
        RETURN NULL;
      END IF;
      offset_minutes := (substr(rest, 2, 2)::int * 60 + right(rest, 2)::int) * (CASE left(rest, 1) WHEN '-' THEN -1 ELSE 1 END);
    END IF;
  END IF;
  IF y < 1 OR mo < 1 OR mo > 12 OR d < 1 OR h > 23 OR mi > 59 OR sec > 59
     OR d > extract(day FROM make_date(y, mo, 1) + interval '1 month' - interval '1 day') THEN
    RETURN NULL;
  END IF;
  -- Whole seconds by make_timestamp, the fraction through an interval literal: both exact to the microsecond
  -- (make_timestamp's seconds are a double).
  RETURN make_timestamp(y, mo, d, h, mi, sec) AT TIME ZONE 'UTC'
         + (CASE WHEN fraction = '' THEN interval '0' ELSE (fraction || ' seconds')::interval END)
         - make_interval(mins => offset_minutes);
END
$$;
"""

DROP_SQL = """
DROP FUNCTION IF EXISTS af_timestamp(text);
DROP FUNCTION IF EXISTS af_boolean(jsonb);
DROP FUNCTION IF EXISTS af_numeric(jsonb);
"""


def create_functions(apps, schema_editor):
    if schema_editor.connection.vendor == "postgresql":
        schema_editor.execute(CREATE_SQL, params=None)


def drop_functions(apps, schema_editor):
    if schema_editor.connection.vendor == "postgresql":
        schema_editor.execute(DROP_SQL, params=None)


class Migration(migrations.Migration):
    dependencies = [("audiences", "0001_initial")]

    operations = [migrations.RunPython(create_functions, drop_functions)]
