-- The attack suite's MariaDB dataset: the demo shop, plus JSON events, a sequence and a view.
CREATE TABLE customers (
    id INT PRIMARY KEY,
    name VARCHAR(191) NOT NULL,
    email VARCHAR(191) NOT NULL UNIQUE,
    country VARCHAR(191) NOT NULL,
    created_at VARCHAR(191) NOT NULL
);

CREATE TABLE products (
    id INT PRIMARY KEY,
    sku VARCHAR(191) NOT NULL UNIQUE,
    name VARCHAR(191) NOT NULL,
    price_cents INT NOT NULL CHECK (price_cents >= 0),
    weight_kg DOUBLE,
    active INT NOT NULL DEFAULT 1
);

CREATE TABLE orders (
    id INT PRIMARY KEY,
    customer_id INT NOT NULL REFERENCES customers(id),
    status VARCHAR(191) NOT NULL CHECK (status IN ('pending', 'paid', 'shipped', 'refunded')),
    placed_at VARCHAR(191) NOT NULL,
    note TEXT
);

CREATE TABLE order_items (
    order_id INT NOT NULL REFERENCES orders(id),
    product_id INT NOT NULL REFERENCES products(id),
    quantity INT NOT NULL CHECK (quantity > 0),
    unit_price_cents INT NOT NULL,
    PRIMARY KEY (order_id, product_id)
);

CREATE TABLE events (
    id INT PRIMARY KEY,
    customer_id INT NOT NULL REFERENCES customers(id),
    payload JSON NOT NULL
);


CREATE SEQUENCE invoice_no START WITH 1000;

CREATE VIEW paid_orders AS SELECT id, customer_id FROM orders WHERE status = 'paid';

INSERT INTO customers (id, name, email, country, created_at) VALUES
    (1, 'Ada Lovelace', 'ada@example.com', 'GB', '2025-01-04T09:12:00Z'),
    (2, 'Grace Hopper', 'grace@example.com', 'US', '2025-01-09T14:30:00Z'),
    (3, 'Alan Turing', 'alan@example.com', 'GB', '2025-02-11T08:05:00Z'),
    (4, 'Margaret Hamilton', 'margaret@example.com', 'US', '2025-02-20T17:45:00Z'),
    (5, 'Edsger Dijkstra', 'edsger@example.com', 'NL', '2025-03-02T11:00:00Z'),
    (6, 'Barbara Liskov', 'barbara@example.com', 'US', '2025-03-15T10:20:00Z'),
    (7, 'Donald Knuth', 'don@example.com', 'US', '2025-04-01T12:00:00Z'),
    (8, 'Frances Allen', 'fran@example.com', 'US', '2025-04-18T16:40:00Z'),
    (9, 'Tim Berners-Lee', 'tim@example.com', 'GB', '2025-05-05T09:00:00Z'),
    (10, 'Radia Perlman', 'radia@example.com', 'US', '2025-05-21T13:10:00Z'),
    (11, 'Niklaus Wirth', 'niklaus@example.com', 'CH', '2025-06-03T07:55:00Z'),
    (12, 'Sophie Wilson', 'sophie@example.com', 'GB', '2025-06-30T15:25:00Z');

INSERT INTO products (id, sku, name, price_cents, weight_kg, active) VALUES
    (1, 'KB-01', 'Mechanical keyboard', 12900, 1.1, 1),
    (2, 'MS-02', 'Trackball mouse', 5900, 0.25, 1),
    (3, 'MN-27', '27" monitor', 32900, 6.4, 1),
    (4, 'CB-USB', 'USB-C cable', 1500, 0.05, 1),
    (5, 'DK-ST', 'Standing desk', 54900, 32.0, 1),
    (6, 'LP-OLD', 'Legacy parallel cable', 900, 0.2, 0),
    (7, 'HD-NC', 'Noise-cancelling headphones', 24900, 0.3, 1),
    (8, 'WC-HD', 'HD webcam', 7900, 0.15, 1);

INSERT INTO orders (id, customer_id, status, placed_at, note) VALUES
    (1, 1, 'shipped', '2025-07-01T10:00:00Z', NULL),
    (2, 2, 'paid', '2025-07-02T11:30:00Z', 'gift wrap'),
    (3, 3, 'pending', '2025-07-03T09:15:00Z', NULL),
    (4, 1, 'refunded', '2025-07-04T16:45:00Z', 'damaged in transit'),
    (5, 4, 'shipped', '2025-07-05T08:20:00Z', NULL),
    (6, 5, 'paid', '2025-07-06T12:00:00Z', NULL),
    (7, 6, 'shipped', '2025-07-07T14:10:00Z', NULL),
    (8, 7, 'pending', '2025-07-08T17:30:00Z', 'call before delivery'),
    (9, 9, 'paid', '2025-07-09T10:40:00Z', NULL),
    (10, 12, 'shipped', '2025-07-10T09:05:00Z', NULL);

INSERT INTO order_items (order_id, product_id, quantity, unit_price_cents) VALUES
    (1, 1, 1, 12900), (1, 4, 2, 1500),
    (2, 3, 1, 32900),
    (3, 2, 1, 5900), (3, 4, 3, 1500),
    (4, 5, 1, 54900),
    (5, 7, 1, 24900), (5, 8, 1, 7900),
    (6, 1, 2, 12900),
    (7, 3, 2, 32900), (7, 4, 1, 1500),
    (8, 5, 1, 54900),
    (9, 2, 1, 5900), (9, 7, 1, 24900),
    (10, 8, 2, 7900);

INSERT INTO events (id, customer_id, payload) VALUES
    (1, 1, '{"kind": "login", "ip": "192.0.2.1", "items": []}'),
    (2, 2, '{"kind": "checkout", "items": [{"sku": "MN-27", "qty": 1}, {"sku": "CB-USB", "qty": 2}], "total": 35900}'),
    (3, 3, '{"kind": "login", "ip": "198.51.100.7", "items": []}'),
    (4, 5, '{"kind": "refund", "items": [{"sku": "DK-ST", "qty": 1}], "reason": "damaged"}');
