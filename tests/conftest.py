pytest_plugins = [
    "tests.support.postgres",
    "tests.support.smarthost",
    "tests.support.postfix",
    "tests.support.gateway",
    "tests.support.dns",
    "tests.support.browser",
]
