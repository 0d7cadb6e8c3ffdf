import re

from rest_framework.exceptions import ValidationError
from rest_framework.pagination import PageNumberPagination

from moran.paging import KeysFirstPaginator

_POSITIVE_INT = re.compile(r"[1-9][0-9]*")


class Pagination(PageNumberPagination):
    """``?page=N&page_size=M``; the body is ``{count, next, previous, results}``.

    Both parameters are whole numbers from 1, given once: anything else is a 400 naming the parameter (DRF would take
    the last of several values, or fall back to the default without a word). A page past the last is a 404, a page
    size past the maximum is cut to it."""

    # A deep page walks the ordering's index for its keys, then reads only its own rows.
    django_paginator_class = KeysFirstPaginator

    page_size = 50
    page_size_query_param = "page_size"
    max_page_size = 500

    def paginate_queryset(self, queryset, request, view=None):
        errors = {}
        for name in (self.page_query_param, self.page_size_query_param):
            values = request.query_params.getlist(name)
            if values and (len(values) > 1 or not _POSITIVE_INT.fullmatch(values[0])):
                errors[name] = [f"'{name}' takes one whole number from 1"]
        if errors:
            raise ValidationError(errors)
        return super().paginate_queryset(queryset, request, view)


class LogPagination(Pagination):
    page_size = 200
    max_page_size = 1000
