from celery import shared_task

from audiences import services


@shared_task(name="audiences.tasks.recompute_audience", acks_late=True)
def recompute_audience(audience_id: int, criteria_version: int | None = None) -> dict:
    return services.audience_recompute(audience_id=audience_id, criteria_version=criteria_version)
