"""A paginator whose deep pages cost what its first page costs, for the admin lists and the list API.

Django's paginator slices the whole query: ``SELECT <every column> FROM t JOIN ... ORDER BY k LIMIT 50 OFFSET
9950`` builds (and joins) ten thousand rows to throw them away. This one reads the page's keys first, through the
ordering's index and without the joins the page does not filter on, then fetches those rows whole: the offset is
walked on a narrow index, and the joins and wide columns (JSON included) are read for the page's rows only. Nothing is
cached, so a page is never stale.

Pages that start before ``deep_offset`` are read as Django reads them (one query). Its ``count`` is exact (the admin and the API show it); on the step log, whose table grows without bound, the admin
keeps that one count (``show_full_result_count = False`` drops the second).
"""

from __future__ import annotations

from django.core.paginator import Paginator
from django.db.models import QuerySet


class KeysFirstPaginator(Paginator):
    #: below this offset the plain slice is as cheap, and saves the second query
    deep_offset = 1000

    def page(self, number):
        number = self.validate_number(number)
        bottom = (number - 1) * self.per_page
        if bottom < self.deep_offset or not isinstance(self.object_list, QuerySet):
            return super().page(number)
        top = bottom + self.per_page
        if top + self.orphans >= self.count:
            top = self.count
        keys = list(self.object_list.values_list("pk", flat=True)[bottom:top])
        # Same ordering, same select_related/defer: the page's rows, fetched whole by primary key.
        rows = {row.pk: row for row in self.object_list.filter(pk__in=keys)}
        return self._get_page([rows[key] for key in keys if key in rows], number, self)
