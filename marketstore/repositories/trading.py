"""The trading aggregate: ``TradingSignalRepository`` and ``OrderRepository``."""
from __future__ import annotations

from typing import Any

from .. import validation as check
from ..errors import DataValidationError, NotFoundError
from ..models import ORDER_STATUSES, SIGNAL_TYPES, Order, OrderEvent, TradingSignal
from ..repository import BaseRepository, reads, statements
from ._sql import page, where


class TradingSignalRepository(BaseRepository[TradingSignal]):
    """Trading signals."""

    model = TradingSignal

    @reads
    def latest(self, symbol: str) -> TradingSignal | None:
        """The newest signal for ``symbol``, or ``None``."""
        symbol = check.symbol(symbol)
        query = (TradingSignal.select().where(TradingSignal.symbol == symbol)
                 .order_by(TradingSignal.timestamp.desc(), TradingSignal.id.desc()).limit(1))
        with self.session("latest"):
            return query.first()

    @reads
    def recent(self, limit: int = 100, *, symbol: str | None = None, signal_type: str | None = None,
               since=None, after_id: int | None = None) -> list[TradingSignal]:
        """The ``limit`` newest signals, for ``symbol`` and of ``signal_type`` when given, since ``since``.

        Newest first; ``after_id`` (the id of the last signal of a page) gives the next page.
        """
        limit = check.limit(limit)
        symbol = None if symbol is None else check.symbol(symbol)
        signal_type = None if signal_type is None else check.choice("signal_type", signal_type, SIGNAL_TYPES)
        since = check.optional_timestamp("since", since)
        after_id = None if after_id is None else check.positive_int("after_id", after_id, check.MAX_INT_ID)
        query = where(TradingSignal.select(),
                      None if symbol is None else TradingSignal.symbol == symbol,
                      None if signal_type is None else TradingSignal.signal_type == signal_type,
                      None if since is None else TradingSignal.timestamp >= since)
        with self.session("recent"):
            return list(page(query, TradingSignal, limit, after_id, newest_first=True))

    @reads
    def by_type(self, signal_type: str, since=None, *, symbol: str | None = None, limit: int = 100,
                after_id: int | None = None) -> list[TradingSignal]:
        """Signals of ``signal_type`` (buy, sell, hold) since ``since``, newest first (see :meth:`recent`)."""
        signal_type = check.choice("signal_type", signal_type, SIGNAL_TYPES)
        return self.recent(limit, symbol=symbol, signal_type=signal_type, since=since, after_id=after_id)

    @reads
    def in_range(self, symbol: str, start, end, *, limit: int = 100,
                 after_id: int | None = None) -> list[TradingSignal]:
        """Up to ``limit`` signals for ``symbol`` with ``start <= timestamp < end``, oldest first.

        ``after_id`` (the id of the last signal of a page) gives the next page.
        """
        symbol = check.symbol(symbol)
        start, end = check.span(start, end)
        limit = check.limit(limit)
        after_id = None if after_id is None else check.positive_int("after_id", after_id, check.MAX_INT_ID)
        query = TradingSignal.select().where(TradingSignal.symbol == symbol, TradingSignal.timestamp >= start,
                                             TradingSignal.timestamp < end)
        with self.session("in_range"):
            return list(page(query, TradingSignal, limit, after_id))


OPEN_STATUSES = ("pending", "submitted", "partially_filled")
FILL_STATUSES = ("partially_filled", "filled")
ORDER_MOVES: dict[str, tuple[str, ...]] = {
    "pending": ("submitted", "cancelled", "rejected"),
    # A submitted order may fill at once; a partly filled one may fill again.
    "submitted": ("partially_filled", "filled", "cancelled", "rejected"),
    "partially_filled": ("partially_filled", "filled", "cancelled", "rejected"),
    "filled": (),
    "cancelled": (),
    "rejected": (),
}
"""The order state machine: status -> the statuses it may move to."""


_ORDERS = statements(Order)
_EVENTS = statements(OrderEvent)
# transition()'s statements, built once: the lock of the order, and its move with or without a fill.
# clock_timestamp(), not now(): taken after the lock was granted, so the audit trail's
# timestamps follow the order in which moves applied.
_LOCK = f'SELECT {_ORDERS.columns} FROM {_ORDERS.table} WHERE {_ORDERS.table}."order_id" = %s LIMIT 1 FOR UPDATE'
_MOVE = ('UPDATE {table} SET "status" = %s{fill}, "updated_at" = clock_timestamp() WHERE "id" = %s '
         'RETURNING {columns}')
_MOVES = {fill: _MOVE.format(table=_ORDERS.table, columns=_ORDERS.columns,
                             fill=', "filled_quantity" = %s, "average_fill_price" = %s' if fill else "")
          for fill in (False, True)}


class OrderRepository(BaseRepository[Order]):
    """Orders, their state machine and audit trail. ``order_id`` is the external id."""

    model = Order

    @reads
    def get_by_order_id(self, order_id: str) -> Order | None:
        """The order with external id ``order_id``, or ``None``."""
        order_id = check.required_text("order_id", order_id, 64)
        with self.session("get_by_order_id"):
            return Order.select().where(Order.order_id == order_id).first()

    @reads
    def by_status(self, status: str, *, symbol: str | None = None, limit: int = 100,
                  after_id: int | None = None) -> list[Order]:
        """Up to ``limit`` orders in ``status`` (for ``symbol`` when given), oldest first.

        ``after_id`` (the id of the last order of a page) gives the next page.
        """
        status = check.choice("status", status, ORDER_STATUSES)
        return self._orders("by_status", Order.status == status, symbol, limit, after_id)

    @reads
    def open_orders(self, symbol: str | None = None, *, limit: int = 100,
                    after_id: int | None = None) -> list[Order]:
        """Up to ``limit`` orders not yet final (pending, submitted, partially_filled), oldest first."""
        return self._orders("open_orders", Order.status.in_(OPEN_STATUSES), symbol, limit, after_id)

    @reads
    def for_signal(self, signal_id: int, *, limit: int = 100, after_id: int | None = None) -> list[Order]:
        """Up to ``limit`` orders placed for trading signal ``signal_id``, oldest first."""
        signal_id = check.positive_int("signal_id", signal_id, check.MAX_INT_ID)
        return self._orders("for_signal", Order.signal == signal_id, None, limit, after_id)

    def _orders(self, operation: str, condition, symbol: str | None, limit: int,
                after_id: int | None) -> list[Order]:
        symbol = None if symbol is None else check.symbol(symbol)
        limit = check.limit(limit)
        after_id = None if after_id is None else check.positive_int("after_id", after_id)
        query = where(Order.select(), condition, None if symbol is None else Order.symbol == symbol)
        with self.session(operation):
            return list(page(query, Order, limit, after_id))

    def transition(self, order_id: str, new_status: str, filled_quantity=None,
                   average_fill_price=None, *, note: str | None = None) -> Order:
        """Move order ``order_id`` to ``new_status``; returns the updated order.

        Under a row lock (``SELECT ... FOR UPDATE``), so concurrent moves of one
        order apply one after the other against the latest state. Legal moves
        are :data:`ORDER_MOVES`. Fills are cumulative, as brokers report them:
        ``filled_quantity`` is the total filled so far and ``average_fill_price``
        the average price of all fills, both required for ``partially_filled``
        (``0 <= filled < total < quantity``) and the price for ``filled`` (whose
        quantity defaults to, and must equal, the order quantity); other moves
        take no fill. ``updated_at`` is set, and an :class:`OrderEvent` holding
        the move and the fill state after it is appended in the same
        transaction. Raises ``NotFoundError`` for an unknown order and
        ``DataValidationError`` (naming the from/to states or the fill) for an
        illegal move; a refused move changes nothing.
        """
        order_id = check.required_text("order_id", order_id, 64)
        new_status = check.choice("new_status", new_status, ORDER_STATUSES)
        given = {"filled_quantity": filled_quantity, "average_fill_price": average_fill_price}
        if new_status not in FILL_STATUSES:
            for name, value in given.items():
                if value is not None:
                    raise DataValidationError(name, value, f"no fill on a move to {new_status}")
        fill = {name: None for name in given}
        fill.update(Order.validate({k: v for k, v in given.items() if v is not None}, partial=True))
        if new_status in FILL_STATUSES:
            if fill["average_fill_price"] is None:
                raise DataValidationError("average_fill_price", None,
                                          f"the average fill price for a move to {new_status}")
            if new_status == "partially_filled" and fill["filled_quantity"] is None:
                raise DataValidationError("filled_quantity", None,
                                          "the total filled so far for a move to partially_filled")
        if note is not None:
            note = OrderEvent.validate({"note": note}, partial=True)["note"]

        with self._write("transition") as write:
            found = write.execute(_LOCK, (Order.order_id.db_value(order_id),)).fetchone()
            if found is None:
                raise NotFoundError(f"order order_id={order_id!r} not found")
            order = _ORDERS.instance(found)
            current = order.status
            if new_status not in ORDER_MOVES[current]:
                allowed = ", ".join(ORDER_MOVES[current]) or f"none: {current} is final"
                raise DataValidationError("new_status", new_status,
                                          f"a legal move from {current} (allowed: {allowed}); "
                                          f"{current} -> {new_status} is not")
            params: list[Any] = [new_status]
            if new_status in FILL_STATUSES:
                total = fill["filled_quantity"] if fill["filled_quantity"] is not None else order.quantity
                if new_status == "filled" and total != order.quantity:
                    raise DataValidationError("filled_quantity", total,
                                              f"the order quantity ({order.quantity}) for a move to filled")
                if new_status == "partially_filled" and not order.filled_quantity < total < order.quantity:
                    raise DataValidationError(
                        "filled_quantity", total,
                        f"more than already filled ({order.filled_quantity}) and less than the order "
                        f"quantity ({order.quantity}) for {current} -> partially_filled")
                params += [Order.filled_quantity.db_value(total),
                           Order.average_fill_price.db_value(fill["average_fill_price"])]
            moved = write.execute(_MOVES[len(params) > 1], params + [order.id]).fetchone()
            updated = _ORDERS.instance(moved)
            write.execute(*_EVENTS.insert({
                "order": order.id, "from_status": current, "to_status": new_status,
                "filled_quantity": updated.filled_quantity, "fill_price": updated.average_fill_price,
                "timestamp": updated.updated_at, "note": note}), last=True)
            return updated

    @reads
    def history(self, order_id: str, *, limit: int = 100) -> list[OrderEvent]:
        """The first ``limit`` moves of order ``order_id``, oldest first (``[]`` for an unknown order)."""
        order_id, limit = check.required_text("order_id", order_id, 64), check.limit(limit)
        query = (OrderEvent.select().join(Order).where(Order.order_id == order_id)
                 .order_by(OrderEvent.timestamp, OrderEvent.id).limit(limit))
        with self.session("history"):
            return list(query)
