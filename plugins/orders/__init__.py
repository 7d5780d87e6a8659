"""The orders plugin: the seed's IOrderService (upf.orders.v1.Orders) on the plugin SDK, orders kept in IStorage."""
