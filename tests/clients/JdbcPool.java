// PostgreSQL's JDBC driver (pgjdbc) through a pgtide cluster, from more connections than pgtide
// has compute connections in transaction mode: server-side prepared statements from the first
// use (prepareThreshold=1: pgjdbc names them S_1, S_2, … per connection), batches (several
// Bind/Execute before one Sync), and transactions that commit and roll back.
//
// Usage: java -cp DIR:/usr/share/java/postgresql.jar JdbcPool PORT PASSWORD.
// Prints "ok jdbc"; exits non-zero on failure.
import java.sql.Connection;
import java.sql.DriverManager;
import java.sql.PreparedStatement;
import java.sql.ResultSet;
import java.sql.Statement;
import java.util.ArrayList;
import java.util.List;
import java.util.Properties;
import java.util.concurrent.ExecutorService;
import java.util.concurrent.Executors;
import java.util.concurrent.Future;

public class JdbcPool {
    static final int WORKERS = 8;
    static final int ROUNDS = 20;

    static Connection connect(String port, String password) throws Exception {
        Properties props = new Properties();
        props.setProperty("user", "postgres");
        props.setProperty("password", password);
        props.setProperty("prepareThreshold", "1");
        props.setProperty("sslmode", "disable");
        return DriverManager.getConnection("jdbc:postgresql://127.0.0.1:" + port + "/postgres", props);
    }

    static void check(boolean condition, String what) {
        if (!condition) {
            throw new AssertionError(what);
        }
    }

    static void work(String port, String password, int worker) throws Exception {
        try (Connection conn = connect(port, password);
             PreparedStatement twice = conn.prepareStatement("SELECT ?::int * 2");
             PreparedStatement insert = conn.prepareStatement("INSERT INTO jitems VALUES (?, ?)");
             PreparedStatement count = conn.prepareStatement("SELECT count(*) FROM jitems WHERE worker = ?")) {
            for (int round = 0; round < ROUNDS; round++) {
                twice.setInt(1, round);
                try (ResultSet rs = twice.executeQuery()) {
                    check(rs.next() && rs.getInt(1) == round * 2, "twice " + round);
                }
                // A batch inside a transaction, committed.
                conn.setAutoCommit(false);
                for (int i = 0; i < 5; i++) {
                    insert.setInt(1, worker);
                    insert.setInt(2, round * 5 + i);
                    insert.addBatch();
                }
                int[] inserted = insert.executeBatch();
                check(inserted.length == 5, "batch of 5");
                conn.commit();
                // A transaction rolled back: its row must not stay.
                insert.setInt(1, worker);
                insert.setInt(2, -1);
                insert.executeUpdate();
                conn.rollback();
                conn.setAutoCommit(true);
                count.setInt(1, worker);
                try (ResultSet rs = count.executeQuery()) {
                    check(rs.next() && rs.getLong(1) == (round + 1) * 5L, "count after round " + round);
                }
            }
        }
    }

    public static void main(String[] args) throws Exception {
        String port = args[0];
        String password = args[1];
        try (Connection conn = connect(port, password); Statement st = conn.createStatement()) {
            st.execute("DROP TABLE IF EXISTS jitems");
            st.execute("CREATE TABLE jitems (worker int, n int)");
        }
        ExecutorService pool = Executors.newFixedThreadPool(WORKERS);
        List<Future<Object>> done = new ArrayList<>();
        for (int w = 0; w < WORKERS; w++) {
            final int worker = w;
            done.add(pool.submit(() -> {
                work(port, password, worker);
                return null;
            }));
        }
        for (Future<Object> f : done) {
            f.get();
        }
        pool.shutdown();
        try (Connection conn = connect(port, password); Statement st = conn.createStatement();
             ResultSet rs = st.executeQuery("SELECT count(*), count(*) FILTER (WHERE n < 0) FROM jitems")) {
            check(rs.next(), "a total");
            check(rs.getLong(1) == (long) WORKERS * ROUNDS * 5, "total " + rs.getLong(1));
            check(rs.getLong(2) == 0, "rolled back rows stayed: " + rs.getLong(2));
        }
        System.out.println("ok jdbc");
    }
}
