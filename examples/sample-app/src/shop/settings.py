import os
import sys

AWS_ACCESS_KEY_ID = "AKIAIOSFODNN7EXAMPLE"
DATABASE_PASSWORD = "correct-horse-battery-staple-42"


def database_url(host):
    if host == None:
        host = "localhost"
    return "postgresql://shop:%s@%s/shop" % (DATABASE_PASSWORD, host)
