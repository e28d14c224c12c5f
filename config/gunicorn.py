"""gunicorn's configuration, from the environment (README, "Configuration"):

    gunicorn -c config/gunicorn.py config.wsgi

Threads (gthread): a request waiting on PostgreSQL or on a slow client holds one thread, not a whole
worker process; config.web adds total deadlines on reading each request, so slow clients free their
thread in bounded time. The access log leaves out query strings, referrers and user names, which can
carry emails (admin searches, `?identity_value=`).
"""

import os

bind = os.environ.get("WEB_BIND", "127.0.0.1:8000")
workers = int(os.environ.get("WEB_CONCURRENCY", "2"))
threads = int(os.environ.get("WEB_THREADS", "8"))
worker_class = "config.web.DeadlineThreadWorker"
# A worker process that stops answering gunicorn's arbiter this long is killed and replaced.
timeout = int(os.environ.get("WEB_TIMEOUT", "60"))
graceful_timeout = int(os.environ.get("WEB_GRACEFUL_TIMEOUT", "30"))
keepalive = int(os.environ.get("WEB_KEEPALIVE", "5"))

logger_class = "config.web.RedactingLogger"
accesslog = os.environ.get("WEB_ACCESS_LOG", "-")
# Client, time, method, path without its query string, protocol, status, bytes, duration.
access_log_format = '%(h)s %(t)s "%(m)s %(U)s %(H)s" %(s)s %(B)s %(M)sms'

# gunicorn's control socket (one path in the home directory, shared by every instance) is not used.
control_socket_disable = True
